"""lm-evaluation-harness's own command line, with the polycom model type registered first.

    python -m polycom.eval.lm_eval_cli run --model hf --model_args pretrained=<run>/hf --tasks arc_easy

lm-eval loads ``--model hf`` folders with ``AutoModelForCausalLM``, which knows ``model_type: polycom``
only after ``import polycom.model``; the ``lm_eval`` executable has no hook to import a plugin
(``--include_path`` adds task YAMLs, not code), hence this wrapper. All arguments go to lm-eval unchanged.
"""

from __future__ import annotations


def main() -> None:
    import polycom.model  # noqa: F401  registers model_type "polycom" with AutoConfig / AutoModelForCausalLM
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
