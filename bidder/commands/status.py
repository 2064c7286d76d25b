"""`bidder status` (placeholder until its issue lands; replaced by the module's owner)."""

HELP = "(not built yet)"


def add_arguments(parser):
    pass


def run(args):
    print("bidder status: not built yet")
    return 2
