"""WMI instances and CIM values as WS-Management sends them, parsed."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_wmi import WmiObject, parse_datetime, parse_interval
from lunasentri_wmi.cim import CimValueError, parse_item

XSI = "http://www.w3.org/2001/XMLSchema-instance"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
P = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_OperatingSystem"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"


def test_a_typed_item_with_nil_datetime_and_text() -> None:
    item = ET.fromstring(
        f'<p:Win32_OperatingSystem xmlns:p="{P}" xmlns:xsi="{XSI}" xmlns:cim="{CIM}" '
        'xsi:type="p:Win32_OperatingSystem_Type">'
        "<p:Caption>Microsoft Windows Server 2008 R2 Datacenter </p:Caption>"
        '<p:LargeSystemCache xsi:nil="true"/>'
        "<p:LastBootUpTime><cim:Datetime>2013-04-10T16:17:23.5Z</cim:Datetime></p:LastBootUpTime>"
        "<p:TotalVisibleMemorySize>629368</p:TotalVisibleMemorySize>"
        "<p:VolumeName></p:VolumeName>"
        "</p:Win32_OperatingSystem>"
    )
    parsed = parse_item(item)
    assert parsed.class_name == "Win32_OperatingSystem"
    assert parsed["caption"] == "Microsoft Windows Server 2008 R2 Datacenter "
    assert parsed["LargeSystemCache"] is None
    assert parsed.datetime("LastBootUpTime") == dt.datetime(2013, 4, 10, 16, 17, 23, 500000, dt.UTC)
    assert parsed.integer("TotalVisibleMemorySize") == 629368
    assert parsed.text("VolumeName") == ""  # empty, not nil
    assert parsed.integer("NoSuchProperty") is None


def test_a_fragment_with_an_array_and_unqualified_names() -> None:
    item = ET.fromstring(
        f'<w:XmlFragment xmlns:w="{W}" xmlns:xsi="{XSI}">'
        "<Name>AMAZONA-Q2R281F</Name><Roles>LM_Workstation</Roles><Roles>NT</Roles>"
        "<Single>one</Single>"
        "<CreationDate><Datetime>2013-04-29T11:43:11.203125-07:00</Datetime></CreationDate>"
        "</w:XmlFragment>"
    )
    parsed = parse_item(item)
    assert parsed.class_name is None
    assert parsed.array("Roles") == ("LM_Workstation", "NT")
    assert parsed.array("single") == ("one",)  # sent once: an array of one
    assert parsed.array("missing") == ()
    assert parsed.scalar("Roles") == "LM_Workstation"
    assert parsed.datetime("CreationDate") == dt.datetime(2013, 4, 29, 18, 43, 11, 203125, dt.UTC)
    assert list(parsed) == ["Name", "Roles", "Single", "CreationDate"]


def test_an_interval() -> None:
    item = ET.fromstring(
        f'<w:XmlFragment xmlns:w="{W}"><Up><Interval>P1DT2H3M4.5S</Interval></Up></w:XmlFragment>'
    )
    assert parse_item(item)["Up"] == dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-04-10T16:17:23.5Z", dt.datetime(2013, 4, 10, 16, 17, 23, 500000, dt.UTC)),
        # Windows writes 100-ns ticks: seven fractional digits.
        ("2013-04-10T16:17:23.1234567Z", dt.datetime(2013, 4, 10, 16, 17, 23, 123456, dt.UTC)),
        ("2013-04-10T18:17:23+02:00", dt.datetime(2013, 4, 10, 16, 17, 23, tzinfo=dt.UTC)),
        ("2013-04-10T16:17:23", dt.datetime(2013, 4, 10, 16, 17, 23, tzinfo=dt.UTC)),
        # DMTF, as the local WMI API gives it: the offset is in minutes.
        ("20130410161723.500000+000", dt.datetime(2013, 4, 10, 16, 17, 23, 500000, dt.UTC)),
        ("20130410091723.000000-420", dt.datetime(2013, 4, 10, 16, 17, 23, tzinfo=dt.UTC)),
    ],
)
def test_cim_datetimes(text: str, expected: dt.datetime) -> None:
    assert parse_datetime(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2013-13-40T00:00:00Z", "20130410.000000+000"])
def test_a_bad_datetime_is_a_cim_value_error(text: str) -> None:
    with pytest.raises(CimValueError):
        parse_datetime(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT30S", dt.timedelta(seconds=30)),
        ("-PT1M", dt.timedelta(minutes=-1)),
        (
            "00000001020304.000005:000",
            dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=5),
        ),
    ],
)
def test_cim_intervals(text: str, expected: dt.timedelta) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "1 day", "P1Y"])
def test_a_bad_interval_is_a_cim_value_error(text: str) -> None:
    with pytest.raises(CimValueError):
        parse_interval(text)


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(9998, 12, 30),
        timezones=st.builds(
            dt.timezone, st.integers(-720, 840).map(lambda m: dt.timedelta(minutes=m))
        ),
    )
)
def test_dmtf_and_iso_forms_of_one_instant_agree(moment: dt.datetime) -> None:
    offset = int(moment.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
    dmtf = moment.strftime("%Y%m%d%H%M%S.%f") + f"{'-' if offset < 0 else '+'}{abs(offset):03d}"
    assert parse_datetime(dmtf) == parse_datetime(moment.isoformat()) == moment


def test_a_non_integer_is_a_cim_value_error() -> None:
    with pytest.raises(CimValueError, match="Size"):
        WmiObject({"Size": "large"}).integer("Size")
    with pytest.raises(CimValueError, match="expected text"):
        WmiObject({"When": dt.datetime.now(dt.UTC)}).text("When")
    with pytest.raises(CimValueError, match="expected a datetime"):
        WmiObject({"Up": dt.timedelta(1)}).datetime("Up")


def test_names_match_case_insensitively_and_keep_their_spelling() -> None:
    instance = WmiObject({"DNSHostName": "HOST"})
    assert instance["dnshostname"] == instance.text("DNSHOSTNAME") == "HOST"
    assert dict(instance) == {"DNSHostName": "HOST"}
    assert len(instance) == 1
    with pytest.raises(KeyError):
        instance["Name"]
