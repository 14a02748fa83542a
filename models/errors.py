"""Exceptions raised by the library; the service maps each to one HTTP status."""


class RNNLMError(Exception):
    """Base class for every error this library raises on purpose."""


class DataError(RNNLMError):
    """A corpus file or folder is missing, empty, binary or fails its checksum."""


class CheckpointError(RNNLMError):
    """A model folder is missing, incomplete or inconsistent."""


class InputError(RNNLMError):
    """A request to the engine is out of range (empty text, bad sampling value, ...)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TrainingCancelled(RNNLMError):
    """Raised inside the training loop when the caller asked it to stop."""
