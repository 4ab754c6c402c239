"""Exceptions raised for bad user input (each message names the argument and what is allowed) or a broken run."""


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another one."""


def require(condition: bool, argument: str, allowed: str, got) -> None:
    """Raise ConfigError('<argument> must be <allowed> (got <got>)') unless condition holds."""
    if not condition:
        raise ConfigError(f"{argument} must be {allowed} (got {got!r})")


class EngineError(RuntimeError):
    """The denoiser, the plan or the input broke an engine invariant (the message says which)."""


class NonFiniteError(EngineError):
    """The denoiser returned NaN/Inf; the message names the model call (phase, serials, levels)."""


class CheckpointError(ConfigError):
    """A render checkpoint is corrupt, truncated, of another format version, or of another model / config / render
    (the message says which); nothing was resumed."""


class RenderError(RuntimeError):
    """Writing a render failed (disk full, folder not writable, ...); the message says what was kept."""
