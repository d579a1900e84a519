"""The evaluator: WVS survey data, prompts, alignment metrics and reports."""
