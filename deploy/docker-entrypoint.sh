#!/bin/sh
# The images' entrypoint: the command of a compose file written for modelport, for
# NVIDIA's tritonserver image or for tensorflow/serving runs here as it is.
#
#   tritonserver ARGS / tensorflow_model_server ARGS   modelport's command of that name
#   --FLAG ...          TF Serving's image: its entrypoint runs tensorflow_model_server
#                       --port=8500 --rest_api_port=8501 --model_name=$MODEL_NAME
#                       --model_base_path=$MODEL_BASE_PATH/$MODEL_NAME and then these flags
#                       (MODEL_NAME 'model', MODEL_BASE_PATH '/models' by default); with
#                       --model_config_file TF Serving ignores the name and base path, and
#                       so they are not given
#   anything else       modelport ARGS (the default: serve /models --host 0.0.0.0)
set -eu

# A swarm worker replica that reserved one GPU (a generic resource of kind gpu, stack.yaml)
# is told which by the engine: that GPU's id gets its task slot.
if [ -n "${DOCKER_RESOURCE_GPU:-}" ] && [ -z "${MODELPORT_TASK_GPUS:-}" ]; then
    export MODELPORT_TASK_GPUS="$DOCKER_RESOURCE_GPU"
fi

case "${1:-}" in
    tritonserver | tensorflow_model_server)
        exec modelport "$@"
        ;;
    --*)
        for arg in "$@"; do
            case "$arg" in
                --model_config_file | --model_config_file=*)
                    exec modelport tensorflow_model_server --port=8500 --rest_api_port=8501 "$@"
                    ;;
            esac
        done
        name="${MODEL_NAME:-model}"
        exec modelport tensorflow_model_server --port=8500 --rest_api_port=8501 \
            --model_name="$name" --model_base_path="${MODEL_BASE_PATH:-/models}/$name" "$@"
        ;;
    *)
        exec modelport "$@"
        ;;
esac
