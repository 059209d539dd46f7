"""Consumer applications: programs that read a stream (often as members of a buffer's consumer group) and
accumulate results from it, each in its own module with its command line beside it."""
