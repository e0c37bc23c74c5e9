"""The pydantic v1 API, whichever pydantic is installed: the one place it is imported from.

A1111 ships pydantic 1.10; pydantic 2 keeps the v1 API as ``pydantic.v1`` (and so does 1.10.17+).
"""

try:
    from pydantic.v1 import BaseModel, Extra, Field, ValidationError, root_validator, validator
except ImportError:  # pydantic < 1.10.17 has no v1 alias
    from pydantic import BaseModel, Extra, Field, ValidationError, root_validator, validator  # type: ignore[assignment, no-redef]

__all__ = ["BaseModel", "Extra", "Field", "ValidationError", "root_validator", "validator"]
