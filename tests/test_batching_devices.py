"""Executors pinned to devices, tested on a CPU split into logical devices."""
import json
import subprocess
import sys
import textwrap

import pytest

from fastserve.batching import devices
from fastserve.batching.executor import Executor
from fastserve.batching.scheduler import Scheduler
from fastserve.config import BatchingConfig, ConfigError, ModelConfig, ServerConfig
from tests.conftest import REPO
from tests.model_builder import export_adder

# Runs in a fresh interpreter: logical devices must be set before TensorFlow starts.
# Each instance's runner is observed where it really runs: the session runtime by a
# traced run of the instance's own session (which device ran the model's nodes), the
# function runtime by the device of the tensors its concrete function returned.
PINNING_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    import numpy as np
    from tensorflow.core.protobuf import config_pb2
    from fastserve.batching.executor import Executor
    from fastserve.batching.scheduler import Scheduler
    from fastserve.config import BatchingConfig, ModelConfig, ServerConfig
    from fastserve.pipeline.member import Member
    from fastserve.servables import saved_model
    from fastserve.servables.version_loader import session_config
    from fastserve.servables.registry import ServableHandle, ServableVersion

    path, runtime = sys.argv[1], sys.argv[2]
    devices = ("/device:CPU:0", "/device:CPU:1")
    model = ModelConfig("m", path, runtime=runtime, devices=devices, instances_per_device=2,
                        batching=BatchingConfig(max_batch_size=4, batch_timeout_micros=1000, max_enqueued_batches=100))
    server = ServerConfig(cpu_devices=2, models=(model,))
    scheduler = Scheduler(server, Executor(1))  # splits the CPU before TensorFlow starts
    loaded = saved_model.load(path, runtime, session_config=session_config(server), devices=devices)
    signature = loaded.signatures["serving_default"]
    seen = []
    tracing = threading.Lock()  # one traced run at a time (TensorFlow's profiler is process-wide)

    def model_devices(metadata):
        infrastructure = ("_SOURCE", "_arg_", "_retval_")
        return sorted({d.device.rsplit("/", 1)[-1] for d in metadata.step_stats.dev_stats
                       for n in d.node_stats if not n.node_name.startswith(infrastructure)})

    class SessionObserver:
        def __init__(self, runner, spec):
            self.runner, self.spec = runner, spec
        def __call__(self, inputs, output_keys):
            metadata = config_pb2.RunMetadata()
            with tracing:
                self.runner.session.run([self.spec.outputs[k].name for k in output_keys],
                                        {self.spec.inputs[k].name: v for k, v in inputs.items()},
                                        options=config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE),
                                        run_metadata=metadata)
            seen.append((threading.current_thread().name, model_devices(metadata)))
            return self.runner(inputs, output_keys)

    def function_observer(function):
        def call(**inputs):
            outputs = function(**inputs)
            seen.append((threading.current_thread().name, sorted({t.device.rsplit("/", 1)[-1] for t in outputs.values()})))
            return outputs
        return call

    for device, runner in signature._instances.items():
        if runtime == "session":
            signature._instances[device] = SessionObserver(runner, loaded.signature_defs["serving_default"])
        else:
            runner._function = function_observer(runner._function)
    servable = ServableVersion("m", 1, loaded)

    async def one(x):
        future = asyncio.get_running_loop().create_future()
        scheduler.submit(ServableHandle(servable), signature, [Member({"x": x}, 0)], ("y",),
                         lambda members, outputs, error: future.set_result(outputs if error is None else error))
        return await future

    async def main():
        xs = [np.full((1, 1), i, np.float32) for i in range(200)]
        results = await asyncio.gather(*(one(x) for x in xs))
        assert all((r["y"] == x + 1).all() for r, x in zip(results, xs))

    asyncio.run(main())
    scheduler.shutdown()
    print("SEEN " + json.dumps(seen))
    """
)


@pytest.mark.parametrize("runtime", ["session", "function"])
def test_batch_threads_run_on_their_devices(runtime, tmp_path):
    path = export_adder(tmp_path / "adder", offset=1)
    result = subprocess.run([sys.executable, "-c", PINNING_SCRIPT, path, runtime], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.split("SEEN ", 1)[1])
    by_thread = {}
    for thread, ran_on in seen:
        assert len(ran_on) == 1, ran_on  # a batch runs on one device
        by_thread.setdefault(thread, set()).add(ran_on[0])
    assert all(len(d) == 1 for d in by_thread.values())  # a thread stays on its device
    used = [d for ds in by_thread.values() for d in ds]
    assert sorted(set(used)) == ["device:CPU:0", "device:CPU:1"]  # both given devices
    assert len(by_thread) <= 4 and all(used.count(d) <= 2 for d in set(used))  # 2 instances per device


def test_device_names():
    assert devices.normalize("gpu:1") == "/device:GPU:1"
    assert devices.normalize("/device:CPU:0") == "/device:CPU:0"
    with pytest.raises(ValueError, match="not a device name"):
        devices.normalize("tpu:0")


def test_without_nvidia_driver_there_are_no_gpus_and_cpu_is_there():
    assert devices.gpus() == [] or all(g.name.startswith("/device:GPU:") for g in devices.gpus())
    assert "/device:CPU:0" in devices.available()


def test_placement_errors_stop_the_start():
    model = ModelConfig("m", "/x", devices=("/device:CPU:0",))
    with pytest.raises(ConfigError, match="model m: devices: the model's executors are batch threads"):
        Scheduler(ServerConfig(models=(model,)), Executor(1))
    model = ModelConfig("m", "/x", batching=BatchingConfig(), devices=("/device:GPU:7",))
    with pytest.raises(ConfigError, match=r"model m: devices: /device:GPU:7 does not exist here \(TensorFlow has /device:CPU:0"):
        Scheduler(ServerConfig(models=(model,)), Executor(1))


def test_placement_config(tmp_path):
    from fastserve.config import load_yaml

    path = tmp_path / "models.yaml"
    path.write_text("models: [{name: a, base_path: /x, devices: [CPU:0, cpu:0]}]")
    with pytest.raises(ConfigError, match="listed twice"):
        load_yaml(str(path))
    path.write_text("models: [{name: a, base_path: /x, devices: [NPU:0]}]")
    with pytest.raises(ConfigError, match="models\\[0\\].devices: 'NPU:0' is not a device name"):
        load_yaml(str(path))
    path.write_text("models: [{name: a, base_path: /x, instances_per_device: 0}]")
    with pytest.raises(ConfigError, match="instances_per_device: expected a positive integer"):
        load_yaml(str(path))
