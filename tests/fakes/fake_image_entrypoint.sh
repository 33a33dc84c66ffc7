#!/bin/sh
# Test double for the image's `lora-gym-entrypoint` (tests/test_local_backend.py builds it into a tiny
# image): it reports what the launcher handed the container, writes into the mounts, and exits as told.
#   FAKE_EXIT  exit status after the "training" (default 0)
#   FAKE_SLEEP seconds to "train" before exiting; SIGTERM meanwhile prints "got TERM", and a second later
#              (as a real step needs time to stop) its last line, then exits 143
trap 'echo "[train] got TERM"; sleep 1; echo "[train] last words after TERM"; exit 143' TERM

echo "[cache-latents] preset=${LORA_GYM_PRESET} expert=${LORA_GYM_EXPERT:-} set=${LORA_GYM_SET:-}"
echo "[cache-latents] user=$(id -u):$(id -g) run_id=${LORA_GYM_RUN_ID:-}"
echo "[cache-latents] image=${LORA_GYM_IMAGE:-} id=${LORA_GYM_IMAGE_ID:-}"
if [ -f "$LORA_GYM_PRESET" ]; then
  echo "[cache-latents] preset file: $(head -n 1 "$LORA_GYM_PRESET")"
fi
if touch "$LORA_GYM_DATASET_DIR/.fake-write-test" 2>/dev/null; then
  echo "[cache-latents] dataset is WRITABLE"
else
  echo "[cache-latents] dataset is read-only"
fi
echo "[cache-latents] captions: $(find "$LORA_GYM_DATASET_DIR" -name '*.txt' | wc -l)"
date > "$LORA_GYM_CACHE_DIR/fake-cache" && echo "[cache-text] cache written"

run="$LORA_GYM_OUTPUT_DIR/${LORA_GYM_RUN_ID:-fake-run}"
mkdir -p "$run" && echo "fake lora" > "$run/fake-lora.safetensors"
# Sleep in the background and wait: a trapped signal interrupts `wait` at once, but not a foreground sleep.
sleep "${FAKE_SLEEP:-0}" &
wait $!
echo "[train] done, exit ${FAKE_EXIT:-0}"
exit "${FAKE_EXIT:-0}"
