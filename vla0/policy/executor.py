"""ChunkExecutor: a new chunk every n_action_steps steps, temporal ensembling, clipping.

It is written once, in the light client package (vla0_client.executor), because the remote
policy on a robot computer executes chunks exactly as VLA0Policy does in process."""

from vla0_client.executor import ChunkExecutor, select_rows

__all__ = ["ChunkExecutor", "select_rows"]
