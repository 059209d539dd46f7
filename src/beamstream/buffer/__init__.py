"""The buffer: many producers in, consumer groups out, bounded memory, acknowledgements."""
