"""What every handler is given: the clients of one stack, and the tables built from them."""

from __future__ import annotations

from dataclasses import dataclass

from ctfleet.aws.clients import Clients
from ctfleet.aws.records import Table, studies_table, uploads_table
from ctfleet.settings import Settings


@dataclass
class HandlerDeps:
    clients: Clients

    @property
    def settings(self) -> Settings:
        return self.clients.settings

    @property
    def uploads(self) -> Table:
        return uploads_table(self.clients)

    @property
    def studies(self) -> Table:
        return studies_table(self.clients)
