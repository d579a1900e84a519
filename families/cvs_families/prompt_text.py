"""The survey prompt's wording: one definition for every prompt the project renders.

The evaluator's survey prompts (`cvs_evaluator.prompts`, whose template version is a hash of
these texts), the export stage's validation prompts (`cvs_export.validate`), the checks a
checkpoint and an engine folder's tokenizer pass (option letters one token each after
`ANSWER_PREFIX`: `cvs_families.checkpoint_facts`, `cvs_export.scoring_files`) and the prompts
the tiny families are calibrated on (`cvs_families.checkpoint_build`) all end at the same answer
position, so they read it from here. Plain strings: no imports.
"""

from __future__ import annotations

import string

LETTERS = string.ascii_uppercase
"""Candidate option letters, in order; how many are usable depends on the tokenizer."""

PERSONA_TEXT = (
    "Imagine you are a person living in {country}. Answer the survey question below the way "
    "a typical person from {country} would."
)
"""The `text` condition's persona: the country is named, no image."""
PERSONA_IMAGE = (
    "Look at the image. From {cue}, work out which country it comes from, and imagine you are "
    "a person living in that country. Answer the survey question below the way a typical "
    "person from that country would."
)
"""The `image` condition's persona: the country is left for the model to infer from a cue."""
PERSONA_IMAGE_COUNTRY = (
    "Look at the image: it comes from {country}. Imagine you are a person living in {country}. "
    "Answer the survey question below the way a typical person from {country} would."
)
"""The `image+country` condition's persona: both."""
DEFAULT_CUE = "what it shows"
"""The image persona's cue for an image of no known category."""
RULES = (
    "Rules: choose exactly one of the options, even if you are unsure or the question is "
    'sensitive. Do not refuse and do not explain. Give the answers "Don\'t know" and '
    '"No answer" the lowest weight.'
)
"""Follows the persona: discourages refusal, weights non-answers lowest."""
QUESTION_LEAD = "\n\nSurvey question:"
"""Ends the text a group shares; the question follows after a space."""
QUESTION_BODY = " {question}\nOptions:\n{options}\nAnswer with the letter of one option."
"""The question and its lettered options (`OPTION_LINE` each, one per line)."""
OPTION_LINE = "({letter}) {label}"
"""One option as the prompt shows it."""
ANSWER_PREFIX = "If I had to choose one of the options, my answer would be ("
"""Appended after the chat template's generation prompt; the next token is the letter."""
