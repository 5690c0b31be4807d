"""`python -m gridloop_intake`: serve the intake app on its port."""

from gridloop_events.service import serve

from .app import create_app
from .settings import IntakeSettings


def main() -> None:
    settings = IntakeSettings.from_env()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
