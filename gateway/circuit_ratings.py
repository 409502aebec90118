"""Assumed circuit ratings of the reference site, by circuit kind (config.CIRCUITS).

Shared by two readers that must agree and must not import each other: the rules' example set
(gateway/rules/models.py: overload thresholds, and the counter rule's most plausible power) and
billing (gateway/billing/allocate.py: the most a circuit can draw, which bounds a plausible step of
its energy counter when the site file gives no `max_power_kw`).
"""

from __future__ import annotations

# Breaker current, and the most the circuit can draw.
# The public supply's main breaker is 630 A at 0.4 kV: at most about 436 kW.
OVERLOAD_A = {"stairwell_lighting": 16, "street_lighting": 32, "lift": 63, "pump": 80, "gate": 16,
              "main_supply": 630}
MAX_POWER_KW = {"stairwell_lighting": 4, "street_lighting": 22, "lift": 45, "pump": 55, "gate": 4,
                "main_supply": 440, "other": 10}
