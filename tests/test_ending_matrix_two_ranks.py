"""The ending matrix's 2-rank half (tests/test_ending_matrix.py describes it): a file of its own so that
pytest-xdist's two workers run the halves side by side."""
import pytest

from tests.test_ending_matrix import cases, run_case, write_table

pytestmark = pytest.mark.slow
TABLE: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def matrix_table():
    yield
    write_table(TABLE, 2)


@pytest.mark.parametrize(**cases(2))
def test_ending(tmp_path, nproc, report_to, legs):
    run_case(tmp_path, nproc, report_to, legs, TABLE)
