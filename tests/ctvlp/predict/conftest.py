import pytest

from tests.ctvlp.predict.case import build_case, evaluate_like_the_job


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return build_case(tmp_path_factory.mktemp("predict_case"))


@pytest.fixture(scope="session")
def job_outputs(case):
    return evaluate_like_the_job(case)
