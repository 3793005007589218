"""The maths: bands, optimizers, checks, decisions, the search driver, exact checks and
class graphs. Plain torch: no Lightning, no files."""
