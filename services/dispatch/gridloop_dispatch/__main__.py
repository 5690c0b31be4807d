"""`python -m gridloop_dispatch` serves the dispatch service on its port."""

from gridloop_events.service import serve

from .app import create_app
from .settings import DispatchSettings


def main() -> None:
    settings = DispatchSettings.from_env()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
