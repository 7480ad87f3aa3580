"""``joint``: train on every site seen so far, the upper bound that needs all past data."""

from dakr.continual.strategies.own_data import OwnDataTopUp


class Joint(OwnDataTopUp):
    """Each stage trains on the training cases of all sites of the lineage plus the new one."""

    name = "joint"
    description = "training on all sites' training data so far (upper bound)"

    def training_sites(self, site: str, past_sites: list[str]) -> list[str]:
        return [*past_sites, site] if site not in past_sites else list(past_sites)
