"""The downstream tasks: how one dataset row becomes scored (context, continuation) requests.

Prompts are lm-evaluation-harness 0.4's zero-shot formats (the task YAMLs under ``lm_eval/tasks``, target
delimiter " ": a continuation is " " + the answer text), so our numbers are comparable with lm-eval's and
the bridge (``lm_eval_bridge``) can run exactly these requests through lm-eval. Three deliberate
differences:

- ``commonsense_qa``: lm-eval lists the options and scores the letters A-E, which sits at chance for small
  models; here the answer texts are scored after "Question: {question}\\nAnswer:" (OLMES's "rc" format, as
  in OLMo's evaluator).
- ``copa``: lm-eval 0.4's choices already start with a space and then get the delimiter too (two spaces);
  here one space, as in lm-eval 0.3 and OLMES.
- ``mmlu``: lm-eval's ``mmlu_continuation`` variant (subject description + "Question: ...\\nAnswer:" + the
  answer text), not the default letter format, for the same reason as commonsense_qa.

``acc_norm`` divides a choice's log-likelihood by the length in characters of its answer text without the
delimiter, exactly as lm-eval does; ``Example.answers`` holds those texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from polycom.eval.sources import Source


@dataclass(frozen=True)
class Request:
    """Score log P(continuation | context). An empty context means "after the BOS/EOS token"."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Example:
    """One item: ``requests[i]`` scores choice i, ``gold`` is the right choice's index."""

    requests: tuple[Request, ...]
    gold: int
    answers: tuple[str, ...]  # per choice, the text whose character count normalizes acc_norm
    meta: dict = field(default_factory=dict)  # breakdown keys, e.g. {"subject": "anatomy"}


class RowError(ValueError):
    """A row that cannot become an example; ``field`` names the offending column."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"field {field_name!r}: {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class Task:
    """A named task: its row format, where its rows live, and how it is scored.

    ``scoring``: "choice" (acc / acc_norm over choices), "pair" (BLiMP: the first request must be more
    likely than the second) or "greedy" (LAMBADA: greedy accuracy and perplexity of one continuation).
    ``breakdown`` lists ``Example.meta`` keys that get per-group metrics; when given, the task's own
    metrics are the macro average over the groups of the first key (MMLU subjects, BLiMP paradigms).
    """

    name: str
    build: Callable[[Mapping], Example]
    sources: tuple[Source, ...]
    headline: str
    scoring: str = "choice"
    breakdown: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- rows


def _value(row: Mapping, name: str):
    value = row.get(name) if isinstance(row, Mapping) else None
    if value is None:
        raise RowError(name, "missing")
    return value


def _text(row: Mapping, name: str) -> str:
    value = _value(row, name)
    if not isinstance(value, str):
        raise RowError(name, f"expected text, got {type(value).__name__}")
    return value


def _texts(row: Mapping, name: str, label: str | None = None) -> list[str]:
    value = _value(row, name)
    label = label or name
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise RowError(label, f"expected a non-empty list of texts, got {value!r}")
    return list(value)


def _index(row: Mapping, name: str, num_choices: int, first: int = 0) -> int:
    """A label (int, bool, or digits as text; numbered from ``first``) as a 0-based choice index."""
    value = _value(row, name)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int):  # bool is an int: False/True -> 0/1
        raise RowError(name, f"expected an integer label, got {value!r}")
    index = int(value) - first
    if not 0 <= index < num_choices:
        raise RowError(name, f"label {value!r} is out of range for {num_choices} choices")
    return index


def _keyed_choices(row: Mapping, key_field: str) -> tuple[list[str], int]:
    """Answer texts and gold index of ``choices: {text: [...], label: [...]}`` + an answer key."""
    choices = _value(row, "choices")
    if not isinstance(choices, Mapping):
        raise RowError("choices", f"expected a mapping with text and label, got {choices!r}")
    texts = _texts(choices, "text", "choices.text")
    labels = _texts(choices, "label", "choices.label")
    if len(labels) != len(texts):
        raise RowError("choices", f"{len(texts)} texts but {len(labels)} labels")
    key = _text(row, key_field).strip()
    if key not in labels:
        raise RowError(key_field, f"{key!r} is not one of the labels {labels}")
    return texts, labels.index(key)


def _multiple_choice(context: str, answers: list[str], gold: int, **meta) -> Example:
    return Example(tuple(Request(context, " " + a) for a in answers), gold, tuple(answers), meta)


# ------------------------------------------------------------------------------------------- formats


def arc(row: Mapping) -> Example:
    answers, gold = _keyed_choices(row, "answerKey")
    return _multiple_choice(f"Question: {_text(row, 'question')}\nAnswer:", answers, gold)


def piqa(row: Mapping) -> Example:
    answers = [_text(row, "sol1"), _text(row, "sol2")]
    return _multiple_choice(f"Question: {_text(row, 'goal')}\nAnswer:", answers, _index(row, "label", 2))


def sciq(row: Mapping) -> Example:
    context = f"{_text(row, 'support').lstrip()}\nQuestion: {_text(row, 'question')}\nAnswer:"
    answers = [_text(row, "distractor1"), _text(row, "distractor2"), _text(row, "distractor3"),
               _text(row, "correct_answer")]
    return _multiple_choice(context, answers, 3)


def winogrande(row: Mapping) -> Example:
    """Partial scoring: each option fills the blank in its own context; both score the same suffix."""
    sentence = _text(row, "sentence")
    blank = sentence.find("_")
    if blank < 0:
        raise RowError("sentence", "has no blank '_'")
    contexts = [sentence[:blank] + _text(row, "option1"), sentence[:blank] + _text(row, "option2")]
    suffix = " " + sentence[blank + 1:].strip()
    gold = _index(row, "answer", 2, first=1)
    return Example(tuple(Request(c, suffix) for c in contexts), gold, tuple(contexts))


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow "[title]" markers become sentence breaks, other bracketed
    markers are dropped, double spaces are collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: Mapping) -> Example:
    context = f"{_text(row, 'activity_label')}: {_text(row, 'ctx_a')} {_text(row, 'ctx_b').capitalize()}"
    answers = [_hellaswag_clean(e) for e in _texts(row, "endings")]
    return _multiple_choice(_hellaswag_clean(context), answers, _index(row, "label", len(answers)))


def boolq(row: Mapping) -> Example:
    """google/boolq has a boolean ``answer``; the super_glue copy has an integer ``label``."""
    gold = _index(row, "label", 2) if "label" in row else _index(row, "answer", 2)
    context = f"{_text(row, 'passage')}\nQuestion: {_text(row, 'question')}?\nAnswer:"
    return _multiple_choice(context, ["no", "yes"], gold)


def openbookqa(row: Mapping) -> Example:
    answers, gold = _keyed_choices(row, "answerKey")
    return _multiple_choice(_text(row, "question_stem"), answers, gold)


def copa(row: Mapping) -> Example:
    """"{premise without its final period} because|therefore" + " {choice, first letter lowercased}"."""
    question = _text(row, "question")
    connectors = {"cause": "because", "effect": "therefore"}
    if question not in connectors:
        raise RowError("question", f"expected 'cause' or 'effect', got {question!r}")
    context = f"{_text(row, 'premise').strip()[:-1]} {connectors[question]}"
    answers = [c[:1].lower() + c[1:] for c in (_text(row, "choice1"), _text(row, "choice2"))]
    return _multiple_choice(context, answers, _index(row, "label", 2))


def commonsense_qa(row: Mapping) -> Example:
    answers, gold = _keyed_choices(row, "answerKey")
    return _multiple_choice(f"Question: {_text(row, 'question').strip()}\nAnswer:", answers, gold)


def social_iqa(row: Mapping) -> Example:
    context = f"Q: {_text(row, 'context')} {_text(row, 'question')}\nA:"
    answers = [_text(row, "answerA"), _text(row, "answerB"), _text(row, "answerC")]
    return _multiple_choice(context, answers, _index(row, "label", 3, first=1))


def mmlu(row: Mapping) -> Example:
    subject = _text(row, "subject")
    context = (f"The following are questions (with answers) about {subject.replace('_', ' ')}.\n\n"
               f"Question: {_text(row, 'question').strip()}\nAnswer:")
    answers = _texts(row, "choices")
    return _multiple_choice(context, answers, _index(row, "answer", len(answers)), subject=subject)


def lambada(row: Mapping) -> Example:
    """The last word after the rest of the passage: Hub rows hold ``text``; the local (llm-foundry) file
    holds ``context`` and ``continuation`` split at the same final space."""
    if "text" in row:
        context, _, last_word = _text(row, "text").rpartition(" ")
    else:
        context, last_word = _text(row, "context"), _text(row, "continuation")
    if not context or not last_word:
        raise RowError("text" if "text" in row else "context", "needs a passage and a last word")
    return Example((Request(context, " " + last_word),), 0, (last_word,))


def blimp(row: Mapping) -> Example:
    """Whole sentences after the BOS/EOS token (lm-eval: empty context, " " + sentence)."""
    good, bad = _text(row, "sentence_good"), _text(row, "sentence_bad")
    return Example((Request("", " " + good), Request("", " " + bad)), 0, (good, bad),
                   {"paradigm": _text(row, "UID"), "phenomenon": _text(row, "linguistics_term")})


# ------------------------------------------------------------------------------------------ registry

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)

BLIMP_PARADIGMS = (
    "adjunct_island", "anaphor_gender_agreement", "anaphor_number_agreement", "animate_subject_passive",
    "animate_subject_trans", "causative", "complex_NP_island",
    "coordinate_structure_constraint_complex_left_branch", "coordinate_structure_constraint_object_extraction",
    "determiner_noun_agreement_1", "determiner_noun_agreement_2", "determiner_noun_agreement_irregular_1",
    "determiner_noun_agreement_irregular_2", "determiner_noun_agreement_with_adj_2",
    "determiner_noun_agreement_with_adj_irregular_1", "determiner_noun_agreement_with_adj_irregular_2",
    "determiner_noun_agreement_with_adjective_1", "distractor_agreement_relational_noun",
    "distractor_agreement_relative_clause", "drop_argument", "ellipsis_n_bar_1", "ellipsis_n_bar_2",
    "existential_there_object_raising", "existential_there_quantifiers_1", "existential_there_quantifiers_2",
    "existential_there_subject_raising", "expletive_it_object_raising", "inchoative", "intransitive",
    "irregular_past_participle_adjectives", "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question", "left_branch_island_simple_question",
    "matrix_question_npi_licensor_present", "npi_present_1", "npi_present_2", "only_npi_licensor_present",
    "only_npi_scope", "passive_1", "passive_2", "principle_A_c_command", "principle_A_case_1",
    "principle_A_case_2", "principle_A_domain_1", "principle_A_domain_2", "principle_A_domain_3",
    "principle_A_reconstruction", "regular_plural_subject_verb_agreement_1",
    "regular_plural_subject_verb_agreement_2", "sentential_negation_npi_licensor_present",
    "sentential_negation_npi_scope", "sentential_subject_island", "superlative_quantifiers_1",
    "superlative_quantifiers_2", "tough_vs_raising_1", "tough_vs_raising_2", "transitive", "wh_island",
    "wh_questions_object_gap", "wh_questions_subject_gap", "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance", "wh_vs_that_with_gap",
    "wh_vs_that_with_gap_long_distance",
)


def _one(hub_path: str, hub_name: str | None, split: str, *local: str) -> tuple[Source, ...]:
    return (Source((hub_path, hub_name, split), local),)


# Hub names: the ones lm-eval 0.4 uses where the original repository is a loading script, which
# datasets >= 4 no longer runs (piqa -> baber/piqa, social_i_qa -> lighteval/siqa, super_glue -> aps/super_glue).
_TASKS = (
    Task("arc_easy", arc, _one("allenai/ai2_arc", "ARC-Easy", "validation", "ai2_arc/ARC-Easy/validation"), "acc"),
    Task("arc_challenge", arc, _one("allenai/ai2_arc", "ARC-Challenge", "validation",
                                    "ai2_arc/ARC-Challenge/validation"), "acc_norm"),
    Task("piqa", piqa, _one("baber/piqa", None, "validation", "piqa/plain_text/validation"), "acc_norm"),
    Task("sciq", sciq, _one("allenai/sciq", None, "validation", "sciq/none/validation"), "acc"),
    Task("winogrande", winogrande, _one("allenai/winogrande", "winogrande_xl", "validation",
                                        "winogrande/winogrande_xl/validation"), "acc"),
    Task("hellaswag", hellaswag, _one("Rowan/hellaswag", None, "validation", "hellaswag/sample1000/validation",
                                      "hellaswag/hellaswag_val_sample1000.jsonl"), "acc_norm"),
    Task("boolq", boolq, _one("google/boolq", None, "validation", "boolq/none/validation"), "acc"),
    Task("openbookqa", openbookqa, _one("allenai/openbookqa", "main", "validation",
                                        "openbookqa/main/validation"), "acc_norm"),
    Task("copa", copa, _one("aps/super_glue", "copa", "validation", "super_glue/copa/validation"), "acc"),
    Task("commonsense_qa", commonsense_qa, _one("tau/commonsense_qa", None, "validation",
                                                "tau/commonsense_qa/none/validation"), "acc_norm"),
    Task("social_iqa", social_iqa, _one("lighteval/siqa", None, "validation", "social_i_qa/none/validation"),
         "acc_norm"),
    Task("mmlu", mmlu, tuple(Source(("cais/mmlu", s, "test"), (f"hails/mmlu_no_train/{s}/test",), s)
                             for s in MMLU_SUBJECTS), "acc", breakdown=("subject",)),
    Task("lambada", lambada, _one("EleutherAI/lambada_openai", "default", "test",
                                  "lambada_openai/lambada_openai.jsonl"), "acc", scoring="greedy"),
    Task("blimp", blimp, tuple(Source(("nyu-mll/blimp", p, "train"), (f"blimp/{p}.jsonl",), p)
                               for p in BLIMP_PARADIGMS), "acc", scoring="pair",
         breakdown=("paradigm", "phenomenon")),
)
TASKS: dict[str, Task] = {task.name: task for task in _TASKS}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
