"""`bidder cancel-all` (placeholder until its issue lands; replaced by the module's owner)."""

HELP = "(not built yet)"


def add_arguments(parser):
    pass


def run(args):
    print("bidder cancel-all: not built yet")
    return 2
