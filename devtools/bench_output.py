"""What a benchmark prints (`python -m bench.<name>`): its JSON report first, then a markdown table of the same
figures. The benches' smoke tests (tests/, bench/tests/) read it with `report_and_table`."""
import json


def report_and_table(stdout: str) -> tuple[object, str]:
    """A bench's printout split in two: the JSON report, and the table after it (from the first line that starts
    with `|`)."""
    table = stdout.index("\n|")
    return json.loads(stdout[:table]), stdout[table:]
