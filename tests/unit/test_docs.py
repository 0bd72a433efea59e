"""The README documents every setting the services read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.chat.settings import ChatSettings
from services.common.settings import AmqpSettings, LogSettings, env_name
from services.history.settings import HistorySettings

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("model", [AmqpSettings, LogSettings, ChatSettings, HistorySettings])
def test_every_variable_is_documented(model: type[BaseSettings]) -> None:
    missing = [env_name(model, field) for field in model.model_fields if f"`{env_name(model, field)}`" not in README]
    assert not missing, f"README lacks {missing}"
