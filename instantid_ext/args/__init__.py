"""InstantID's arguments: one pydantic model for the UI, the API and the PNG infotext.

The WebUI hands a script its arguments in several shapes: the UI's positional control values,
the API's ``{"args": [{...}]}`` (which A1111 puts in the first slot and pads with the UI
defaults), a JSON string from a textbox, a pasted infotext. :meth:`InstantIDArgs.parse` turns
each into one validated :class:`InstantIDArgs`, and every problem into one
:class:`InvalidInputError` sentence per field, so the WebUI glue can show it as-is.

The pydantic v1 API is used on purpose (see :mod:`.pydantic_v1`): A1111 ships pydantic 1.10,
and pydantic 2 keeps the v1 API as ``pydantic.v1``.

* :mod:`.model`: the fields and their checks;
* :mod:`.choices`: how choices, booleans, names and aliases may be spelled;
* :mod:`.ranges`: every number's bounds, for sliders, messages and plot axes;
* :mod:`.messages`: pydantic's errors as sentences;
* :mod:`.forms`: the input shapes; :mod:`.infotext`: the PNG-info form.
"""

from .choices import ALIASES
from .infotext import INFOTEXT_PREFIX
from .model import ARG_FIELDS, InstantIDArgs, Person, infotext_labels, is_enabled

__all__ = [
    "ALIASES",
    "ARG_FIELDS",
    "INFOTEXT_PREFIX",
    "InstantIDArgs",
    "Person",
    "infotext_labels",
    "is_enabled",
]
