"""Names of the continual-learning strategies, importable without torch (for the CLI parser)."""

#: Every strategy ``dakr adapt --strategy`` accepts, in the order help texts list them.
STRATEGY_NAMES = ("dakr", "replay", "finetune", "ewc", "lwf", "joint", "distill", "dakr-cna", "dakr-cra")
#: The six strategies every benchmark compares.
MAIN_STRATEGIES = ("finetune", "replay", "ewc", "lwf", "joint", "dakr")
