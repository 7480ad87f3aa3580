"""``finetune``: sequential fine-tuning on each new site, the lower bound on retention."""

from dakr.continual.strategies.own_data import OwnDataTopUp


class Finetune(OwnDataTopUp):
    """Train on the new site only; nothing protects what earlier sites taught the network."""

    name = "finetune"
    description = "sequential fine-tuning on the new site (lower bound)"
