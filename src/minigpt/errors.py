"""The one exception type a user can cause: it carries a single sentence for the CLI to print."""


class MiniGPTError(Exception):
    """A mistake in the user's input: what was wrong and how to fix it, in one sentence."""


class ConfigError(MiniGPTError):
    """An invalid configuration value, file or preset."""


class DataError(MiniGPTError):
    """A data path, corpus or tokenizer problem."""


class CheckpointError(MiniGPTError):
    """A checkpoint directory that is missing, incomplete, corrupt or inconsistent."""
