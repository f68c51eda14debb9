"""WMI instances as WS-Management sends them, turned into Python values.

Windows answers a WQL query in one of two shapes: ``SELECT *`` gives *typed*
items (``<p:Win32_X>`` with properties in the class's namespace), an explicit
property list gives ``<w:XmlFragment>`` items with unqualified properties.
Both parse to the same :class:`WmiObject`. Every value arrives as text; a
caller that knows a property is a number asks for it with :meth:`WmiObject.integer`.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping

import attrs

XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
FRAGMENT = "{http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd}XmlFragment"

WmiScalar = str | dt.datetime | dt.timedelta | None
"""A property's value: text, a ``cim:Datetime``, a ``cim:Interval``, or None (``xsi:nil``)."""
WmiValue = WmiScalar | tuple[WmiScalar, ...]
"""A tuple for a property sent more than once (an array)."""

# DMTF datetime: yyyymmddHHMMSS.mmmmmm then the offset from UTC in minutes
# (e.g. 20130410161723.500000+000); what the local WMI API returns.
_DMTF = re.compile(r"^(\d{14})\.(\d{6})([+-])(\d{3})$")
_DMTF_INTERVAL = re.compile(r"^(\d{8})(\d{2})(\d{2})(\d{2})\.(\d{6}):000$")
_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class CimValueError(ValueError):
    """A property's text is not what its CIM type promises."""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


@attrs.frozen
class WmiObject(Mapping[str, WmiValue]):
    """One WMI instance: property name to value, names matched case-insensitively.

    ``class_name`` is the class of a typed item, None for an ``XmlFragment``
    (which does not say).
    """

    properties: Mapping[str, WmiValue]
    class_name: str | None = None
    _folded: Mapping[str, str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_folded", {name.lower(): name for name in self.properties})

    def __getitem__(self, name: str) -> WmiValue:
        return self.properties[self._folded.get(name.lower(), name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.properties)

    def __len__(self) -> int:
        return len(self.properties)

    def scalar(self, name: str) -> WmiScalar:
        """The property's value; the first element of an array; None when absent."""
        value = self.get(name)
        if isinstance(value, tuple):
            return value[0] if value else None
        return value

    def text(self, name: str) -> str | None:
        """The property as text (None when nil or absent)."""
        value = self.scalar(name)
        if value is None:
            return None
        if isinstance(value, str):
            return value
        raise CimValueError(f"{name}: expected text, got {type(value).__name__}")

    def integer(self, name: str) -> int | None:
        """The property as an integer (CIM's uint64 and sint64 arrive as text)."""
        text = self.text(name)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            raise CimValueError(f"{name}: {text!r} is not an integer") from None

    def datetime(self, name: str) -> dt.datetime | None:
        """The property as an aware datetime; a DMTF string is parsed too."""
        value = self.scalar(name)
        if value is None or isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            return parse_datetime(value)
        raise CimValueError(f"{name}: expected a datetime, got {type(value).__name__}")

    def array(self, name: str) -> tuple[WmiScalar, ...]:
        """The property as an array: an element sent once is an array of one."""
        value = self.get(name)
        if value is None:
            return ()
        return value if isinstance(value, tuple) else (value,)


def parse_item(item: ET.Element) -> WmiObject:
    """A typed item or an ``XmlFragment`` as a :class:`WmiObject`."""
    class_name = None if item.tag == FRAGMENT else _local(item.tag)
    properties: dict[str, WmiValue] = {}
    for child in item:
        name = _local(child.tag)
        value = _property(child)
        if name in properties:  # an array: the element repeated
            before = properties[name]
            properties[name] = (*(before if isinstance(before, tuple) else (before,)), value)
        else:
            properties[name] = value
    return WmiObject(properties, class_name)


def _property(element: ET.Element) -> WmiScalar:
    if element.get(XSI_NIL, "").strip().lower() == "true":
        return None
    for child in element:
        kind = _local(child.tag)
        text = (child.text or "").strip()
        if kind in {"Datetime", "Date"}:
            return parse_datetime(text)
        if kind == "Interval":
            return parse_interval(text)
    # Embedded objects and other structures are not read by this plugin: their text.
    return element.text or ""


def parse_datetime(text: str) -> dt.datetime:
    """A CIM datetime: ISO 8601 (WS-Management) or DMTF (the local WMI API), as UTC.

    A time without an offset is taken as UTC.
    """
    text = text.strip()
    dmtf = _DMTF.match(text)
    if dmtf is not None:
        digits, micro, sign, minutes = dmtf.groups()
        naive = dt.datetime.strptime(digits + micro, "%Y%m%d%H%M%S%f")
        offset = dt.timedelta(minutes=int(minutes)) * (-1 if sign == "-" else 1)
        return naive.replace(tzinfo=dt.timezone(offset)).astimezone(dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(_seven_digits_to_six(text))
    except ValueError:
        raise CimValueError(f"{text!r} is not a CIM datetime") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _seven_digits_to_six(text: str) -> str:
    # Windows writes up to 7 fractional digits (100-ns ticks); Python 3.11 takes 6.
    return re.sub(r"(\.\d{6})\d+", r"\1", text, count=1)


def parse_interval(text: str) -> dt.timedelta:
    """A CIM interval: an xs:duration (``P1DT2H3M4.5S``) or DMTF (``ddddddddHHMMSS.mmmmmm:000``)."""
    text = text.strip()
    dmtf = _DMTF_INTERVAL.match(text)
    if dmtf is not None:
        days, hours, minutes, seconds, micro = (int(g) for g in dmtf.groups())
        return dt.timedelta(
            days=days, hours=hours, minutes=minutes, seconds=seconds, microseconds=micro
        )
    duration = _DURATION.match(text)
    if duration is None or text in {"P", "-P"} or text.endswith("T"):
        raise CimValueError(f"{text!r} is not a CIM interval")
    delta = dt.timedelta(
        days=int(duration["days"] or 0),
        hours=int(duration["hours"] or 0),
        minutes=int(duration["minutes"] or 0),
        seconds=float(duration["seconds"] or 0),
    )
    return -delta if duration["sign"] else delta
