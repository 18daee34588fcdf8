"""``--max-cost``: never start a request that could take the run's spend past the cap.

Each request reserves its worst case before it is sent (offline prompt count at the input price,
plus its ``max_tokens``, or the model's output ceiling, at the output price) and gives the
reservation back when it lands, its real cost added to the spend. The spend starts from the
journal's totals, so it carries over restarts. The first request that does not fit stops intake
for good (the run drains what is in flight and exits 4, resumable with a higher cap).
"""

from __future__ import annotations

from runner.errors import UsageError
from runner.provider.prices import prices

__all__ = ["DEFAULT_OUTPUT_TOKENS", "Budget", "BudgetReached", "worst_case"]

DEFAULT_OUTPUT_TOKENS = 4096  # worst case for a request with no max_tokens, when the model names no ceiling


def worst_case(model: str, prompt: int, max_tokens: int, margin: float = 1.1, tier: str | None = None) -> float:
    """The most a request to ``model`` could cost, its prompt count raised by ``margin``, at the service
    ``tier``'s prices where the model has them; a UsageError if ``model`` has no known price."""
    price = prices(model)
    if price is None:
        raise UsageError(
            f"--max-cost needs prices, and litellm's price map has none for model {model!r}; "
            "drop --max-cost or choose a priced model"
        )
    output = max_tokens or price.max_output_tokens or DEFAULT_OUTPUT_TOKENS
    priced = tier if tier in price.tiers else None
    return price.cost(round(prompt * margin), output, tier=priced) or 0.0


class BudgetReached(Exception):
    """This request could pass the cap: it is not sent, and the run stops taking new rows."""


class Budget:
    """Spend so far, worst cases in flight, and the cap they must stay under."""

    def __init__(self, cap: float, tier: str | None = None) -> None:
        self.cap = cap
        self.tier = tier  # the service tier requests are reserved at (CallPlan.reserved_tier)
        self.spent = 0.0
        self.reserved = 0.0
        self.reached = False
        # Our offline prompt count can run under the provider's; worst cases take the largest
        # provider/offline ratio seen, plus 10%.
        self.prompt_margin = 1.1

    def worst_case(self, model: str, prompt: int, max_tokens: int) -> float:
        """The most a request could cost; a UsageError if ``model`` has no known price."""
        return worst_case(model, prompt, max_tokens, self.prompt_margin, self.tier)

    def start_from(self, spent: float) -> None:
        """What earlier invocations of the run spent (from the journal) counts against the cap too."""
        self.spent = spent

    def spend(self, amount: float) -> None:
        """Money spent outside a reservation of this process (a worker's report, a batch's output)."""
        self.spent += amount

    def hold(self, amount: float) -> None:
        """Hold ``amount`` whatever the cap (money already committed: a batch submitted by an earlier run)."""
        self.reserved += amount

    def reserve(self, worst: float) -> None:
        """Hold ``worst`` dollars for a request about to be sent, or raise BudgetReached."""
        if self.reached or self.spent + self.reserved + worst > self.cap:
            self.reached = True
            raise BudgetReached(
                f"--max-cost ${self.cap:g} reached (${self.spent:.6g} spent, ${self.reserved:.6g} in flight, "
                f"next up to ${worst:.6g})"
            )
        self.reserved += worst

    def hold_up_to(self, amount: float) -> float:
        """Reserve as much of ``amount`` as is left under the cap (for a lease); what was held."""
        held = max(0.0, min(amount, self.cap - self.spent - self.reserved))
        self.reserved += held
        return held

    def charge(self, cost: float, estimated: bool) -> float:
        """What an answer costing ``cost`` counts for: an ``estimated`` one (the provider sent no usage, litellm
        counted the tokens offline) with the margin the offline prompt counts get."""
        return cost * self.prompt_margin if estimated else cost

    def settle(
        self,
        worst: float,
        cost: float | None,
        prompt: int = 0,
        provider_prompt: int | None = None,
        estimated: bool = False,
    ) -> None:
        """Give back a reservation and add what the request cost (None: an answer with no price, so its worst
        case; ``estimated``: litellm's count, with the margin)."""
        self.reserved = max(0.0, self.reserved - worst)
        self.spent += worst if cost is None else self.charge(cost, estimated)
        if prompt > 0 and provider_prompt:
            self.prompt_margin = max(self.prompt_margin, 1.1 * provider_prompt / prompt)
