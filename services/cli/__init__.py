"""The `durable-chat` command-line client: send, tail, history."""
