"""vla0: Vision-Language-Action policies on unmodified VLMs (VLA-0: actions as text)."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import vla0` stays cheap for the CLI and the server's client.
    if name == "VLA0Policy":
        from vla0.policy.policy import VLA0Policy
        return VLA0Policy
    if name == "PolicyConfig":
        from vla0.config import PolicyConfig
        return PolicyConfig
    raise AttributeError(name)
