"""Change control of model updates: acceptance policy, gate, sign-off and change record.

- :mod:`dakr.governance.policy`: the versioned acceptance policy stored in the store;
- :mod:`dakr.governance.statistics`: the seeded paired bootstrap;
- :mod:`dakr.governance.gate`: applying the policy to a new version and its parent;
- :mod:`dakr.governance.decisions`: recorded decisions, sign-offs, statuses and activation rules;
- :mod:`dakr.governance.provenance` and :mod:`dakr.governance.record`: the change record.
"""

#: How a run may override the policy's activation of its new version (``None`` = by the policy).
ACTIVATION_MODES = ("never", "if-accepted", "always")
