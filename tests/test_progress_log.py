"""What a run says while it trains: the validation loss at every eval.interval (with tokens and elapsed time),
and early on, the time training still takes at the measured speed."""

import logging
import re

import pytest

from polycom.train.hooks import duration
from test_train import _train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_validation_loss_at_each_interval_and_the_time_to_go_are_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="polycom.train.hooks"):
        _train(tmp_path, ["trainer.max_steps=16", "eval.interval=4", "trainer.checkpoint_interval=null",
                          "trainer.save_hf=false"])
    for step in (4, 8, 12, 16):  # every interval, not only the end
        tokens = f"{step * 1024:,}"  # debug=smoke: 8 x 128 tokens a step
        assert re.search(rf"step {step}: validation loss \d+\.\d{{4}} \(perplexity [\d.]+\) after {tokens} tokens, "
                         r"\d+ (s|min)", caplog.text), caplog.text
    assert re.search(r"step 8 of 16: ~\d+ (s|min) of training to go at [\d,]+ tokens/s \(measured over steps 2-8",
                     caplog.text), caplog.text


@pytest.mark.parametrize("seconds,text", [(42, "42 s"), (780, "13 min"), (9000, "2.5 h")])
def test_duration(seconds, text):
    assert duration(seconds) == text
