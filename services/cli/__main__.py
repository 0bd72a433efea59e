"""`python -m services.cli`, the same as the `durable-chat` console script."""

from services.cli.main import main

if __name__ == "__main__":
    main()
