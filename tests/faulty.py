"""A ClientApp that fails on purpose, for fault tests in simulation and beside deployment."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from lhs_federated.apps import client_app, server_app
from lhs_federated.apps.engines import run_inprocess


def faulty_client(fail_site: int, fail_round: int, error: Exception) -> ClientApp:
    """The real ClientApp, except that one site raises ``error`` in one round."""
    app = ClientApp(mods=client_app.SITE_MODS)
    app.query(client_app.CLOSE_ACTION)(client_app.acknowledge_close)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return client_app.describe(message, context)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition = context.node_config["partition-id"]
        if partition == fail_site and message.content["config"]["server-round"] == fail_round:
            raise error
        return client_app.train(message, context)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return client_app.evaluate(message, context)

    return app


def run_with(client: ClientApp, study, out_dir) -> None:
    """Run ``study`` in process with ``client`` at every site (3 sites)."""
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out_dir)}
    run_inprocess(config, 3, client=client)
