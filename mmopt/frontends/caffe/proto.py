"""The subset of Caffe's ``caffe.proto`` that mmopt reads, built into message classes at run time.

No protoc and no generated code: :data:`SCHEMA` below is written in proto2 syntax (a subset of it:
messages, nested or top-level enums, ``optional``/``repeated`` fields, ``default`` and ``packed``
options), :func:`_file_descriptor` turns it into a ``FileDescriptorProto``, and protobuf's message
factory makes the classes from that, in a private descriptor pool so nothing clashes with another
``caffe`` package a process may have loaded.

Field names and numbers are those of the public Caffe schema (BVLC/caffe ``src/caffe/proto/caffe.proto``;
``PermuteParameter`` from the SSD fork, as OpenCV reads it): they are facts of the file format. Only
the messages and fields that a deploy network or a ``.caffemodel`` uses for inference are listed;
a text field outside this subset is skipped with a warning by :func:`parse_prototxt`, and binary
fields outside it stay unknown fields of the parsed message, which is harmless.

    net = parse_prototxt(text, "deploy.prototxt")       # NetParameter
    weights = parse_caffemodel(data, "model.caffemodel")  # NetParameter with blobs
"""

from __future__ import annotations

import functools
import logging
import re

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from mmopt.errors import ModelLoadError

logger = logging.getLogger(__name__)

SCHEMA = r"""
enum Phase { TRAIN = 0; TEST = 1; }

message BlobShape { repeated int64 dim = 1 [packed = true]; }

message BlobProto {
  optional BlobShape shape = 7;
  repeated float data = 5 [packed = true];
  repeated float diff = 6 [packed = true];
  repeated double double_data = 8 [packed = true];
  repeated double double_diff = 9 [packed = true];
  optional int32 num = 1 [default = 0];
  optional int32 channels = 2 [default = 0];
  optional int32 height = 3 [default = 0];
  optional int32 width = 4 [default = 0];
}

message FillerParameter {
  optional string type = 1 [default = constant];
  optional float value = 2 [default = 0];
  optional float min = 3 [default = 0];
  optional float max = 4 [default = 1];
  optional float mean = 5 [default = 0];
  optional float std = 6 [default = 1];
  optional int32 sparse = 7 [default = -1];
  enum VarianceNorm { FAN_IN = 0; FAN_OUT = 1; AVERAGE = 2; }
  optional VarianceNorm variance_norm = 8 [default = FAN_IN];
}

message NetParameter {
  optional string name = 1;
  repeated string input = 3;
  repeated BlobShape input_shape = 8;
  repeated int32 input_dim = 4;
  optional bool force_backward = 5 [default = false];
  optional NetState state = 6;
  optional bool debug_info = 7 [default = false];
  repeated LayerParameter layer = 100;
  repeated V1LayerParameter layers = 2;
}

message NetState {
  optional Phase phase = 1 [default = TEST];
  optional int32 level = 2 [default = 0];
  repeated string stage = 3;
}

message NetStateRule {
  optional Phase phase = 1;
  optional int32 min_level = 2;
  optional int32 max_level = 3;
  repeated string stage = 4;
  repeated string not_stage = 5;
}

message ParamSpec {
  optional string name = 1;
  enum DimCheckMode { STRICT = 0; PERMISSIVE = 1; }
  optional DimCheckMode share_mode = 2;
  optional float lr_mult = 3 [default = 1];
  optional float decay_mult = 4 [default = 1];
}

message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated string bottom = 3;
  repeated string top = 4;
  optional Phase phase = 10;
  repeated float loss_weight = 5;
  repeated ParamSpec param = 6;
  repeated BlobProto blobs = 7;
  repeated bool propagate_down = 11;
  repeated NetStateRule include = 8;
  repeated NetStateRule exclude = 9;
  optional TransformationParameter transform_param = 100;
  optional LossParameter loss_param = 101;
  optional ArgMaxParameter argmax_param = 103;
  optional BatchNormParameter batch_norm_param = 139;
  optional BiasParameter bias_param = 141;
  optional ConcatParameter concat_param = 104;
  optional ConvolutionParameter convolution_param = 106;
  optional CropParameter crop_param = 144;
  optional DropoutParameter dropout_param = 108;
  optional EltwiseParameter eltwise_param = 110;
  optional ELUParameter elu_param = 140;
  optional ExpParameter exp_param = 111;
  optional FlattenParameter flatten_param = 135;
  optional InnerProductParameter inner_product_param = 117;
  optional InputParameter input_param = 143;
  optional LogParameter log_param = 134;
  optional LRNParameter lrn_param = 118;
  optional PermuteParameter permute_param = 202;
  optional PoolingParameter pooling_param = 121;
  optional PowerParameter power_param = 122;
  optional PReLUParameter prelu_param = 131;
  optional ReLUParameter relu_param = 123;
  optional ReshapeParameter reshape_param = 133;
  optional ScaleParameter scale_param = 142;
  optional SigmoidParameter sigmoid_param = 124;
  optional SoftmaxParameter softmax_param = 125;
  optional SliceParameter slice_param = 126;
  optional TanHParameter tanh_param = 127;
  optional ThresholdParameter threshold_param = 128;
}

message TransformationParameter {
  optional float scale = 1 [default = 1];
  optional bool mirror = 2 [default = false];
  optional uint32 crop_size = 3 [default = 0];
  optional string mean_file = 4;
  repeated float mean_value = 5;
  optional bool force_color = 6 [default = false];
  optional bool force_gray = 7 [default = false];
}

message LossParameter {
  optional int32 ignore_label = 1;
  optional bool normalize = 2;
}

message ArgMaxParameter {
  optional bool out_max_val = 1 [default = false];
  optional uint32 top_k = 2 [default = 1];
  optional int32 axis = 3;
}

message BatchNormParameter {
  optional bool use_global_stats = 1;
  optional float moving_average_fraction = 2 [default = 0.999];
  optional float eps = 3 [default = 1e-05];
}

message BiasParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
}

message ConcatParameter {
  optional int32 axis = 2 [default = 1];
  optional uint32 concat_dim = 1 [default = 1];
}

message ConvolutionParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  repeated uint32 pad = 3;
  repeated uint32 kernel_size = 4;
  repeated uint32 stride = 6;
  repeated uint32 dilation = 18;
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_h = 11;
  optional uint32 kernel_w = 12;
  optional uint32 stride_h = 13;
  optional uint32 stride_w = 14;
  optional uint32 group = 5 [default = 1];
  optional FillerParameter weight_filler = 7;
  optional FillerParameter bias_filler = 8;
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 15 [default = DEFAULT];
  optional int32 axis = 16 [default = 1];
  optional bool force_nd_im2col = 17 [default = false];
}

message CropParameter {
  optional int32 axis = 1 [default = 2];
  repeated uint32 offset = 2;
}

message DropoutParameter { optional float dropout_ratio = 1 [default = 0.5]; }

message EltwiseParameter {
  enum EltwiseOp { PROD = 0; SUM = 1; MAX = 2; }
  optional EltwiseOp operation = 1 [default = SUM];
  repeated float coeff = 2;
  optional bool stable_prod_grad = 3 [default = true];
}

message ELUParameter { optional float alpha = 1 [default = 1]; }

message ExpParameter {
  optional float base = 1 [default = -1];
  optional float scale = 2 [default = 1];
  optional float shift = 3 [default = 0];
}

message FlattenParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 end_axis = 2 [default = -1];
}

message InnerProductParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  optional FillerParameter weight_filler = 3;
  optional FillerParameter bias_filler = 4;
  optional int32 axis = 5 [default = 1];
  optional bool transpose = 6 [default = false];
}

message InputParameter { repeated BlobShape shape = 1; }

message LogParameter {
  optional float base = 1 [default = -1];
  optional float scale = 2 [default = 1];
  optional float shift = 3 [default = 0];
}

message LRNParameter {
  optional uint32 local_size = 1 [default = 5];
  optional float alpha = 2 [default = 1];
  optional float beta = 3 [default = 0.75];
  enum NormRegion { ACROSS_CHANNELS = 0; WITHIN_CHANNEL = 1; }
  optional NormRegion norm_region = 4 [default = ACROSS_CHANNELS];
  optional float k = 5 [default = 1];
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 6 [default = DEFAULT];
}

message PermuteParameter { repeated uint32 order = 1; }

message PoolingParameter {
  enum PoolMethod { MAX = 0; AVE = 1; STOCHASTIC = 2; }
  optional PoolMethod pool = 1 [default = MAX];
  optional uint32 pad = 4 [default = 0];
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_size = 2;
  optional uint32 kernel_h = 5;
  optional uint32 kernel_w = 6;
  optional uint32 stride = 3 [default = 1];
  optional uint32 stride_h = 7;
  optional uint32 stride_w = 8;
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 11 [default = DEFAULT];
  optional bool global_pooling = 12 [default = false];
  enum RoundMode { CEIL = 0; FLOOR = 1; }
  optional RoundMode round_mode = 13 [default = CEIL];
}

message PowerParameter {
  optional float power = 1 [default = 1];
  optional float scale = 2 [default = 1];
  optional float shift = 3 [default = 0];
}

message PReLUParameter {
  optional FillerParameter filler = 1;
  optional bool channel_shared = 2 [default = false];
}

message ReLUParameter {
  optional float negative_slope = 1 [default = 0];
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 2 [default = DEFAULT];
}

message ReshapeParameter {
  optional BlobShape shape = 1;
  optional int32 axis = 2 [default = 0];
  optional int32 num_axes = 3 [default = -1];
}

message ScaleParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
  optional bool bias_term = 4 [default = false];
  optional FillerParameter bias_filler = 5;
}

message SigmoidParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}

message SoftmaxParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
  optional int32 axis = 2 [default = 1];
}

message SliceParameter {
  optional int32 axis = 3 [default = 1];
  repeated uint32 slice_point = 2;
  optional uint32 slice_dim = 1 [default = 1];
}

message TanHParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}

message ThresholdParameter { optional float threshold = 1 [default = 0]; }

message V1LayerParameter {
  repeated string bottom = 2;
  repeated string top = 3;
  optional string name = 4;
  repeated NetStateRule include = 32;
  repeated NetStateRule exclude = 33;
  enum LayerType {
    NONE = 0; ABSVAL = 35; ACCURACY = 1; ARGMAX = 30; BNLL = 2; CONCAT = 3;
    CONTRASTIVE_LOSS = 37; CONVOLUTION = 4; DATA = 5; DECONVOLUTION = 39; DROPOUT = 6;
    DUMMY_DATA = 32; EUCLIDEAN_LOSS = 7; ELTWISE = 25; EXP = 38; FLATTEN = 8; HDF5_DATA = 9;
    HDF5_OUTPUT = 10; HINGE_LOSS = 28; IM2COL = 11; IMAGE_DATA = 12; INFOGAIN_LOSS = 13;
    INNER_PRODUCT = 14; LRN = 15; MEMORY_DATA = 29; MULTINOMIAL_LOGISTIC_LOSS = 16; MVN = 34;
    POOLING = 17; POWER = 26; RELU = 18; SIGMOID = 19; SIGMOID_CROSS_ENTROPY_LOSS = 27;
    SILENCE = 36; SOFTMAX = 20; SOFTMAX_LOSS = 21; SPLIT = 22; SLICE = 33; TANH = 23;
    WINDOW_DATA = 24; THRESHOLD = 31;
  }
  optional LayerType type = 5;
  repeated BlobProto blobs = 6;
  repeated float blobs_lr = 7;
  repeated float weight_decay = 8;
  repeated float loss_weight = 35;
  optional ArgMaxParameter argmax_param = 23;
  optional ConcatParameter concat_param = 9;
  optional ConvolutionParameter convolution_param = 10;
  optional DropoutParameter dropout_param = 12;
  optional EltwiseParameter eltwise_param = 24;
  optional ExpParameter exp_param = 41;
  optional InnerProductParameter inner_product_param = 17;
  optional LRNParameter lrn_param = 18;
  optional PoolingParameter pooling_param = 19;
  optional PowerParameter power_param = 21;
  optional ReLUParameter relu_param = 30;
  optional SigmoidParameter sigmoid_param = 38;
  optional SoftmaxParameter softmax_param = 39;
  optional SliceParameter slice_param = 31;
  optional TanHParameter tanh_param = 37;
  optional ThresholdParameter threshold_param = 25;
  optional TransformationParameter transform_param = 36;
  optional LossParameter loss_param = 42;
}
"""

#: V1 (``layers``) enum type -> V2 (``layer``) type string
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}
_TOKEN = re.compile(r'[A-Za-z_][A-Za-z0-9_.]*|-?[0-9][0-9.eE+-]*|[{}=;\[\],]')


def _file_descriptor(schema: str, package: str = "caffe") -> descriptor_pb2.FileDescriptorProto:
    """Translate the proto2 subset in ``schema`` into a ``FileDescriptorProto``."""
    tokens = _TOKEN.findall(re.sub(r"//[^\n]*", "", schema))
    fdp = descriptor_pb2.FileDescriptorProto(name=f"mmopt_{package}.proto", package=package,
                                             syntax="proto2")
    pos = 0
    # scope name -> set of enum names declared in it (first pass over the tokens)
    messages: set[str] = set()
    enums: dict[str, set[str]] = {"": set()}
    scope = []
    for i, tok in enumerate(tokens):
        if tok in ("message", "enum"):
            name = tokens[i + 1]
            if tok == "message":
                messages.add(name)
            else:
                enums.setdefault(scope[-1] if scope else "", set()).add(name)
            scope.append(name if tok == "message" else scope[-1] if scope else "")
        elif tok == "}":
            scope.pop()

    def expect(value: str) -> None:
        nonlocal pos
        if tokens[pos] != value:
            raise AssertionError(f"schema: expected {value!r} at token {pos}, got {tokens[pos]!r}")
        pos += 1

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def parse_enum(target) -> None:
        enum = target.add(name=take())
        expect("{")
        while tokens[pos] != "}":
            name = take()
            expect("=")
            enum.value.add(name=name, number=int(take()))
            expect(";")
        expect("}")

    def parse_message(msg_name: str) -> None:
        msg = fdp.message_type.add(name=msg_name)
        expect("{")
        while tokens[pos] != "}":
            if tokens[pos] == "enum":
                take()
                parse_enum(msg.enum_type)
                continue
            label, ftype, fname = take(), take(), take()
            expect("=")
            field = msg.field.add(name=fname, number=int(take()))
            field.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if label == "repeated"
                           else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if ftype in _SCALARS:
                field.type = _SCALARS[ftype]
            elif ftype in enums.get(msg_name, ()):
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                field.type_name = f".{package}.{msg_name}.{ftype}"
            elif ftype in enums[""]:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                field.type_name = f".{package}.{ftype}"
            elif ftype in messages:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{package}.{ftype}"
            else:
                raise AssertionError(f"schema: unknown type {ftype} of {msg_name}.{fname}")
            if tokens[pos] == "[":
                take()
                while True:
                    option = take()
                    expect("=")
                    value = take()
                    if option == "default":
                        field.default_value = value
                    elif option == "packed":
                        field.options.packed = value == "true"
                    if tokens[pos] == "]":
                        break
                    expect(",")
                expect("]")
            expect(";")
        expect("}")

    while pos < len(tokens):
        kind = take()
        if kind == "message":
            parse_message(take())
        elif kind == "enum":
            parse_enum(fdp.enum_type)
        else:
            raise AssertionError(f"schema: unexpected token {kind!r}")
    return fdp


@functools.cache
def _classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    fdp = _file_descriptor(SCHEMA)
    pool.Add(fdp)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{m.name}"))
            for m in fdp.message_type}


def message_class(name: str):
    """The message class ``caffe.<name>`` (e.g. ``"NetParameter"``, ``"LayerParameter"``)."""
    return _classes()[name]


def new_net():
    return message_class("NetParameter")()


_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')


def parse_prototxt(text: str, where: str):
    """Parse a prototxt into a ``NetParameter`` (see :func:`parse_prototxt_report`)."""
    net, skipped = parse_prototxt_report(text, where)
    if skipped:
        logger.warning("%s: skipped fields mmopt does not read (first: %s)", where, skipped)
    return net


def parse_prototxt_report(text: str, where: str):
    """Parse a prototxt; return ``(NetParameter, first skipped field or None)``.

    Fields outside mmopt's schema subset (data-layer, loss and solver settings, parameters of layer
    types mmopt does not convert) are skipped; the layer types are checked when the network is
    converted, so an unsupported layer still fails there with its name.
    """
    net = new_net()
    try:
        text_format.Parse(text, net)
        return upgrade_v1(net, where), None
    except text_format.ParseError as exc:
        unknown = _UNKNOWN_FIELD.search(str(exc))
        if not unknown:
            raise ModelLoadError(f"{where}: not a valid Caffe prototxt ({_one_line(exc)})") from exc
        skipped = f"{unknown.group(1)} at line {str(exc).split(':')[0].strip()}"
    net = new_net()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{where}: not a valid Caffe prototxt ({_one_line(exc)})") from exc
    return upgrade_v1(net, where), skipped


def parse_caffemodel(data: bytes, where: str):
    """Parse a binary ``.caffemodel`` (a serialized ``NetParameter`` holding the weights)."""
    if not data:
        raise ModelLoadError(f"{where}: file is empty, expected a Caffe .caffemodel")
    net = new_net()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelLoadError(f"{where}: not a valid .caffemodel (protobuf parse failed: "
                             f"{_one_line(exc)}); the file may be truncated") from exc
    if not net.layer and not net.layers:
        raise ModelLoadError(f"{where}: not a Caffe .caffemodel (no layers found)")
    return upgrade_v1(net, where)


def upgrade_v1(net, where: str):
    """Rewrite a network in the legacy V1 ``layers`` format into V2 ``layer`` messages (in place)."""
    if not net.layers:
        return net
    if net.layer:
        raise ModelLoadError(f"{where}: mixes V1 'layers' and V2 'layer' entries")
    enum = net.layers[0].DESCRIPTOR.fields_by_name["type"].enum_type
    for old in net.layers:
        new = net.layer.add(name=old.name)
        kind = enum.values_by_number[old.type].name if old.type in enum.values_by_number else None
        new.type = V1_TYPES.get(kind, kind or f"V1LayerType{old.type}")
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        new.blobs.extend(old.blobs)
        new.include.extend(old.include)
        new.exclude.extend(old.exclude)
        new.loss_weight.extend(old.loss_weight)
        for field, value in old.ListFields():
            if field.name.endswith("_param") and field.name in new.DESCRIPTOR.fields_by_name:
                getattr(new, field.name).CopyFrom(value)
    del net.layers[:]
    logger.info("%s: upgraded the legacy V1 'layers' format", where)
    return net


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
