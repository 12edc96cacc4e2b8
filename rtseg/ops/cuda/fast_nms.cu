// Fast NMS keep flags (YOLACT paper, Sec. 3.3), one thread per (class, candidate).
//
// boxes: (C, K, 4) float32 point form (x1, y1, x2, y2), each class's candidates sorted by
//        score, best first (the caller's per-class top-k).
// keep:  (C, K) uint8 out; 1 when the candidate's column maximum of the upper-triangular IoU
//        matrix (rows i < j, the better-scored candidates, suppressed or not) is <= iou_threshold.
//
// Same arithmetic as rtseg.ops.boxes.box_iou (compile with --fmad=false for bit-equal IoU):
// inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0); iou = inter / ((a + b) - inter).
// A NaN IoU (two identical zero-area boxes) makes the maximum NaN and the candidate dropped,
// as torch's max does.

extern "C" __global__ void fast_nms_keep(const float* __restrict__ boxes, const int num_classes,
                                         const int k, const float iou_threshold,
                                         unsigned char* __restrict__ keep) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int c = blockIdx.y;
    if (j >= k || c >= num_classes) return;
    const float* cls = boxes + (long long)c * k * 4;
    const float bx1 = cls[j * 4 + 0], by1 = cls[j * 4 + 1], bx2 = cls[j * 4 + 2], by2 = cls[j * 4 + 3];
    const float area_b = (bx2 - bx1) * (by2 - by1);
    float best = 0.0f;
    bool is_nan = false;
    for (int i = 0; i < j; ++i) {
        const float ax1 = cls[i * 4 + 0], ay1 = cls[i * 4 + 1], ax2 = cls[i * 4 + 2], ay2 = cls[i * 4 + 3];
        float w = fminf(ax2, bx2) - fmaxf(ax1, bx1);
        float h = fminf(ay2, by2) - fmaxf(ay1, by1);
        w = w < 0.0f ? 0.0f : w;
        h = h < 0.0f ? 0.0f : h;
        const float inter = w * h;
        const float area_a = (ax2 - ax1) * (ay2 - ay1);
        const float iou = inter / ((area_a + area_b) - inter);
        if (iou != iou) { is_nan = true; break; }
        best = iou > best ? iou : best;
    }
    keep[(long long)c * k + j] = (!is_nan && best <= iou_threshold) ? 1 : 0;
}
