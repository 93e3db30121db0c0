"""Other stacks' policies trained beside ours on the same data, for side-by-side results (`vla peer train`)."""
