"""Rules: the `rules:` section's models, the engine, and one module per rule kind."""

from .alerts import Alert, AlertBook
from .base import SiteView
from .engine import Engine
from .models import Rule, check_rules, example_rules, parse_rules

__all__ = ["Alert", "AlertBook", "Engine", "Rule", "SiteView", "check_rules", "example_rules", "parse_rules"]
