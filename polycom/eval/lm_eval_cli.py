"""lm-evaluation-harness's own command line, with the polycom model type registered first.

    python -m polycom.eval.lm_eval_cli run --model hf --model_args pretrained=<run>/hf --tasks arc_easy

An exported folder carries its own code, so the stock ``lm_eval`` runs it with ``trust_remote_code=True``
(README, "Sharing a checkpoint"). This wrapper is for running it through the installed package instead
(``trust_remote_code=False``: the folder's code is not executed): it imports ``polycom.model``, which registers
``model_type: polycom`` with ``AutoModelForCausalLM``, then hands every argument to lm-eval unchanged.
"""

from __future__ import annotations


def main() -> None:
    import polycom.model  # noqa: F401  registers model_type "polycom" with AutoConfig / AutoModelForCausalLM
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
