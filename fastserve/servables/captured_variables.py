"""Restore the variables a TF2 SavedModel's functions capture, when its saver does not.

In a TF2 SavedModel the graph holds one VarHandleOp per exported variable; each
function call node takes the variables its function captured as its last inputs,
and the saver's restore op fills the variables the checkpoint names. Keras 3's
variables wrap a tf.Variable: `tf.saved_model.save` exports the wrapped variable
(which the functions capture) *and* a second variable for the wrapper, initialised
from the first, and its saver restores only that second one. Loaded into a session,
as TensorFlow's C++ loader does (TF Serving fails these models the same way), the
variables the signatures read stay uninitialised: "Could not find variable ...".

The SavedObjectGraph says which object each capture is (a concrete function's
`bound_inputs`), and the checkpoint's own object graph, whose node ids are the same,
gives that object's checkpoint key. Every captured variable the saver left
uninitialised is restored from its own key, which is what `tf.saved_model.load` does.
The saver's own copies, which no signature reads, are then freed (a second copy of
every weight: 100 MB for ResNet-50).
"""
import logging

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, trackable_object_graph_pb2

log = logging.getLogger(__name__)

_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def restore_uninitialized(session: tf.compat.v1.Session, meta_graph: meta_graph_pb2.MetaGraphDef, variables_prefix: str) -> int:
    """Restore the captured variables the load left uninitialised; returns how many."""
    captured = _captured_variables(meta_graph)
    if not captured:
        return 0
    graph = session.graph
    handles = [graph.get_operation_by_name(name).outputs[0] for name in captured]
    with graph.as_default(), tf.name_scope("fastserve_check_variables"):
        initialized = session.run([tf.raw_ops.VarIsInitializedOp(resource=h) for h in handles])
    missing = [(name, h) for (name, h), ok in zip(zip(captured, handles), initialized) if not ok]
    if not missing:
        return 0
    keys = _checkpoint_keys(variables_prefix)
    restorable = [(name, h, keys[captured[name]]) for name, h in missing if captured[name] in keys]
    if not restorable:
        return 0
    with graph.as_default(), tf.name_scope("fastserve_restore_captured"):
        values = tf.raw_ops.RestoreV2(
            prefix=variables_prefix,
            tensor_names=[key for _, _, key in restorable],
            shape_and_slices=[""] * len(restorable),
            dtypes=[h.op.get_attr("dtype") for _, h, _ in restorable],
        )
        assigns = [tf.raw_ops.AssignVariableOp(resource=h, value=v) for (_, h, _), v in zip(restorable, values)]
    unread = [graph.get_operation_by_name(name).outputs[0] for name in _unread_variables(meta_graph)]
    with graph.as_default(), tf.name_scope("fastserve_free_unread"):
        frees = [tf.raw_ops.DestroyResourceOp(resource=h, ignore_lookup_error=True) for h in unread]
    session.run(frees)  # first, so that the restore can reuse their memory
    session.run(assigns)
    log.info("restored %d captured variables the SavedModel's saver does not restore (e.g. %s); freed %d that no signature reads",
             len(restorable), restorable[0][0], len(unread))
    return len(restorable)


def _captured_variables(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, int]:
    """{VarHandleOp node name: object-graph node id} for every variable a function call captures."""
    objects = meta_graph.object_graph_def
    functions = objects.concrete_functions
    if not functions:
        return {}
    handles = {node.name for node in meta_graph.graph_def.node if node.op == "VarHandleOp"}
    captured = {}
    for node in meta_graph.graph_def.node:
        if node.op not in _CALL_OPS:
            continue
        function = functions.get(node.attr["f"].func.name)
        if function is None or not function.bound_inputs:
            continue
        data_inputs = [name for name in node.input if not name.startswith("^")]
        for tensor, node_id in zip(data_inputs[-len(function.bound_inputs):], function.bound_inputs):
            name = tensor.split(":", 1)[0]
            if name in handles and objects.nodes[node_id].WhichOneof("kind") == "variable":
                captured[name] = node_id
    return captured


def _unread_variables(meta_graph: meta_graph_pb2.MetaGraphDef) -> list[str]:
    """VarHandleOps that no servable signature's outputs depend on (the saver's copies)."""
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    todo = [info.name for key, sig in meta_graph.signature_def.items() if not key.startswith("__") for info in sig.outputs.values()]
    seen = set()
    while todo:
        name = todo.pop().lstrip("^").split(":", 1)[0]
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        todo.extend(nodes[name].input)
    return [name for name, node in nodes.items() if node.op == "VarHandleOp" and name not in seen]


def _checkpoint_keys(variables_prefix: str) -> dict[int, str]:
    """{object-graph node id: checkpoint key of its value} from the checkpoint's object graph."""
    reader = tf.train.load_checkpoint(variables_prefix)
    if not reader.has_tensor(_OBJECT_GRAPH_KEY):
        return {}
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    return {
        node_id: attribute.checkpoint_key
        for node_id, node in enumerate(graph.nodes)
        for attribute in node.attributes
        if attribute.name == "VARIABLE_VALUE"
    }
