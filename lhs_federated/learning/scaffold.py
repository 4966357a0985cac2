"""SCAFFOLD's control variates, the site's side (Karimireddy et al., 2020).

When hospitals' data differ, each site's local steps drift towards its own
optimum and FedAvg's average lands off the federation's optimum. SCAFFOLD
estimates each site's drift with a *control variate*: the server keeps ``c``
(the federation's average update direction), each site keeps its own ``c_i``,
and every local gradient is corrected by ``c - c_i``. After ``K`` local steps
of plain SGD with learning rate ``lr`` from the global model ``x`` to ``y_i``,
the site refreshes its control variate with the paper's option II::

    c_i+ = c_i - c + (x - y_i) / (K * lr)

and sends ``y_i`` and ``delta_c_i = c_i+ - c_i``. Option II needs no extra pass
over the data, and it assumes plain SGD (study check: optimizer 'sgd', no
momentum). The server side is :mod:`lhs_federated.apps.scaffold`.
"""

from __future__ import annotations

import numpy as np

Arrays = dict[str, np.ndarray]


def zero_control(template: Arrays) -> Arrays:
    """A control variate of zeros shaped like the model (the starting value)."""
    return {name: np.zeros_like(value, dtype=np.float32) for name, value in template.items()}


def drift_correction(server_control: Arrays, client_control: Arrays) -> Arrays:
    """``c - c_i``: added to every local gradient of the round."""
    return {name: server_control[name] - client_control[name] for name in server_control}


def refreshed_control(
    global_arrays: Arrays,
    local_arrays: Arrays,
    server_control: Arrays,
    client_control: Arrays,
    *,
    steps: int,
    learning_rate: float,
) -> Arrays:
    """The site's new control variate ``c_i+`` (option II of the paper).

    Parameters
    ----------
    global_arrays, local_arrays : dict of str to ndarray
        The model the round started from (``x``) and the site's result (``y_i``).
    server_control, client_control : dict of str to ndarray
        ``c`` and ``c_i`` as they were during the round.
    steps : int
        Local SGD steps taken (``K``).
    learning_rate : float
        Their learning rate (``lr``).
    """
    scale = 1.0 / (steps * learning_rate)
    return {
        name: (
            client_control[name]
            - server_control[name]
            + scale * (global_arrays[name] - local_arrays[name])
        ).astype(np.float32)
        for name in client_control
    }
