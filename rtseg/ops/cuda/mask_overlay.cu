// YOLACT mask assembly and overlay from the prototype-grid logits.
//
// logits: (h, w, n) float32 = prototypes @ coefficients^T (a cuBLAS GEMM by the caller).
// grid_probabilities turns them into the soft masks prob (n, h, w) float32 = crop(sigmoid(logits)),
// the arithmetic of rtseg.ops.masks.mask_probabilities (sigmoid 1 / (1 + exp(-v)) as torch's kernel;
// crop as rtseg.ops.masks.crop_masks: box scaled to the grid, ordered, padded by one cell, clamped).
// A frame pixel (y, x) of an H x W output samples prob bilinearly exactly as torch's
// interpolate(mode="bilinear", align_corners=False) (source = (dst + 0.5) * in/out - 0.5,
// clamped at 0) and is "on" when the sample is > threshold.

// rtseg.ops.boxes.sanitize: relative (a, b) on an axis of `size` -> ordered pixels, padded, clamped to [0, size].
__device__ __forceinline__ void sanitize(const float a, const float b, const int size, const float padding,
                                         float* lo, float* hi) {
    const float pa = a * (float)size, pb = b * (float)size;
    const float l = (pa < pb ? pa : pb) - padding;
    const float h = (pa < pb ? pb : pa) + padding;
    *lo = l < 0.0f ? 0.0f : l;
    *hi = h > (float)size ? (float)size : h;
}

// Soft masks: one thread per prob element (i, y, x).
extern "C" __global__ void grid_probabilities(const float* __restrict__ logits, const float* __restrict__ boxes,
                                              const int h, const int w, const int n, const int crop,
                                              float* __restrict__ prob) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * h * w) return;
    const int x = (int)(idx % w);
    const int y = (int)((idx / w) % h);
    const int i = (int)(idx / ((long long)w * h));
    float p = 1.0f / (1.0f + expf(-logits[((long long)y * w + x) * n + i]));
    if (crop) {
        const float* b = boxes + i * 4;
        float x1, x2, y1, y2;
        sanitize(b[0], b[2], w, 1.0f, &x1, &x2);
        sanitize(b[1], b[3], h, 1.0f, &y1, &y2);
        const float fx = (float)x, fy = (float)y;
        if (!(fx >= x1 && fx < x2 && fy >= y1 && fy < y2)) p = 0.0f;
    }
    prob[idx] = p;
}

__device__ __forceinline__ bool mask_on(const float* __restrict__ prob, const int h, const int w, const int i,
                                        const int y, const int x, const float scale_y, const float scale_x,
                                        const float threshold) {
    float sy = scale_y * ((float)y + 0.5f) - 0.5f;
    float sx = scale_x * ((float)x + 0.5f) - 0.5f;
    sy = sy < 0.0f ? 0.0f : sy;
    sx = sx < 0.0f ? 0.0f : sx;
    const int y0 = (int)sy, x0 = (int)sx;
    const int y1 = y0 < h - 1 ? y0 + 1 : y0;
    const int x1 = x0 < w - 1 ? x0 + 1 : x0;
    const float ly = sy - (float)y0, lx = sx - (float)x0;
    const float hy = 1.0f - ly, hx = 1.0f - lx;
    const float* p = prob + (long long)i * h * w;
    const float v = hy * (hx * p[y0 * w + x0] + lx * p[y0 * w + x1]) +
                    ly * (hx * p[y1 * w + x0] + lx * p[y1 * w + x1]);
    return v > threshold;
}

// Full-resolution binary masks: out (n, H, W) uint8, one thread per output element.
extern "C" __global__ void assemble_masks(const float* __restrict__ prob,
                                          const int h, const int w, const int n, const int H, const int W,
                                          const float scale_y, const float scale_x, const float threshold,
                                          unsigned char* __restrict__ out) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)n * H * W;
    if (idx >= total) return;
    const int x = (int)(idx % W);
    const int y = (int)((idx / W) % H);
    const int i = (int)(idx / ((long long)W * H));
    out[idx] = mask_on(prob, h, w, i, y, x, scale_y, scale_x, threshold) ? 1 : 0;
}

// Whether frame pixel (y, x) lies in the window instance box b (relative point form) may paint: as
// rtseg.ops.device_overlay.paint_boxes, the frame box (sanitize, no padding) rounded out by one pixel,
// clipped to the frame, half-open.
__device__ __forceinline__ bool in_paint_box(const float* __restrict__ b, const int H, const int W, const int y,
                                             const int x) {
    float x1, x2, y1, y2;
    sanitize(b[0], b[2], W, 0.0f, &x1, &x2);
    sanitize(b[1], b[3], H, 0.0f, &y1, &y2);
    const float fx0 = floorf(x1) - 1.0f, fy0 = floorf(y1) - 1.0f;
    const float fx1 = ceilf(x2) + 1.0f, fy1 = ceilf(y2) + 1.0f;
    const int x0 = (int)(fx0 < 0.0f ? 0.0f : fx0), y0 = (int)(fy0 < 0.0f ? 0.0f : fy0);
    const int xe = (int)(fx1 > (float)W ? (float)W : fx1), ye = (int)(fy1 > (float)H ? (float)H : fy1);
    return x >= x0 && x < xe && y >= y0 && y < ye;
}

// Overlay: one thread per frame pixel. The pixel takes the colour of the instance painted last by
// annotate's painter's order (score ascending, stable): among the instances whose paint box holds the
// pixel and whose mask is on there, the highest score, on a tie the later index; blended as
// round(frame * (1 - alpha) + colour * alpha); other pixels are copied. boxes (n, 4) relative point
// form, scores (n,) float32, colors (n, 3) uint8 BGR; frame/out: (H, W, 3) uint8 BGR.
extern "C" __global__ void overlay_masks(const unsigned char* __restrict__ frame, const float* __restrict__ prob,
                                         const float* __restrict__ boxes, const float* __restrict__ scores,
                                         const unsigned char* __restrict__ colors,
                                         const int h, const int w, const int n, const int H, const int W,
                                         const float scale_y, const float scale_x, const float threshold,
                                         const float alpha, unsigned char* __restrict__ out) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)H * W) return;
    const int x = (int)(idx % W);
    const int y = (int)(idx / W);
    int owner = -1;
    float best = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float s = scores[i];
        if (owner >= 0 && !(s >= best)) continue;  // painted under the owner (detections come score descending)
        if (!in_paint_box(boxes + i * 4, H, W, y, x)) continue;
        if (mask_on(prob, h, w, i, y, x, scale_y, scale_x, threshold)) {
            owner = i;
            best = s;
        }
    }
    const unsigned char* px = frame + idx * 3;
    unsigned char* po = out + idx * 3;
    if (owner < 0) {
        po[0] = px[0]; po[1] = px[1]; po[2] = px[2];
        return;
    }
    const unsigned char* col = colors + owner * 3;
    for (int ch = 0; ch < 3; ++ch) {
        const float v = (float)px[ch] * (1.0f - alpha) + (float)col[ch] * alpha;
        const int r = __float2int_rn(v);
        po[ch] = (unsigned char)(r < 0 ? 0 : (r > 255 ? 255 : r));
    }
}
