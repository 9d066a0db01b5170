"""The acting side: policies, the control loop and the policy server. Needs no torch.

Dependencies: numpy, onnxruntime(-gpu), tokenizers, opencv, msgpack, websockets.
"""

from policies.base import Policy, Robot, act_batch
from policies.chunking import ChunkExecutor
from policies.control_loop import ControlLoop, LoopReport
from policies.onnx_policy import OnnxPolicy
from policies.remote import RemotePolicy
from policies.safety import SafetyFilter, UnsafeAction
from policies.sim_robot import SimRobot

__all__ = [
    "ChunkExecutor",
    "ControlLoop",
    "LoopReport",
    "OnnxPolicy",
    "Policy",
    "RemotePolicy",
    "Robot",
    "SafetyFilter",
    "SimRobot",
    "UnsafeAction",
    "act_batch",
]
