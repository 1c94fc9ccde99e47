"""This plugin against attnbench's mechanism contract: the checks attnbench runs on its own plugins."""
import pytest

from attnbench.testing import contract_cases

from attnbench_example import MeanAttention


@pytest.mark.parametrize("case", contract_cases(MeanAttention), ids=str)
def test_mean_attention_meets_the_contract(case):
    case()
