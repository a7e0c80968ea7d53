"""Simulations over the real ledger: ``comptroller simulate group`` (the group-chat storm)."""

from comptroller.simulate.report import markdown_table, render_storm_html, story
from comptroller.simulate.sizes import TokenSizes
from comptroller.simulate.storm import STRATEGIES, StormConfig, StormRow, run_storm

__all__ = ["STRATEGIES", "StormConfig", "StormRow", "TokenSizes", "markdown_table", "render_storm_html",
           "run_storm", "story"]
