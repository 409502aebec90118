"""Monthly public electricity allocation: interval consumption, tariffs, shares, reports."""
