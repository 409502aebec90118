"""Public lighting: switching plans (plan.py), relay outputs on the buses (outputs.py), commands
proven by readback and meter (control.py), and what the plans saved (savings.py)."""
