// YOLACT mask assembly and overlay from the soft masks on the prototype grid.
//
// prob: (n, h, w) float32 = crop(sigmoid(prototypes @ coefficients^T)), computed by the caller with
//       rtseg.ops.masks.mask_probabilities (a cuBLAS GEMM and two small element-wise kernels), so
//       the sigmoid and the crop are the torch reference's own.
// A frame pixel (y, x) of an H x W output samples prob bilinearly exactly as torch's
// interpolate(mode="bilinear", align_corners=False) (source = (dst + 0.5) * in/out - 0.5,
// clamped at 0) and is "on" when the sample is > threshold.

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

// Overlay: one thread per frame pixel. order (n,) lists instances top-most first (the painter's
// order reversed); a pixel takes the colour of the first instance whose mask is on there and whose
// paint box (n, 4) int32 x0, y0, x1, y1 (half-open) holds it, blended as
// round(frame * (1 - alpha) + colour * alpha); other pixels are copied. frame/out: (H, W, 3) uint8 BGR.
extern "C" __global__ void overlay_masks(const unsigned char* __restrict__ frame, const float* __restrict__ prob,
                                         const int* __restrict__ paint,
                                         const int* __restrict__ order, const unsigned char* __restrict__ colors,
                                         const int h, const int w, const int n, const int H, const int W,
                                         const float scale_y, const float scale_x, const float threshold,
                                         const float alpha, unsigned char* __restrict__ out) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)H * W) return;
    const int x = (int)(idx % W);
    const int y = (int)(idx / W);
    int owner = -1;
    for (int o = 0; o < n && owner < 0; ++o) {
        const int i = order[o];
        const int* pb = paint + i * 4;
        if (x < pb[0] || x >= pb[2] || y < pb[1] || y >= pb[3]) continue;
        if (mask_on(prob, h, w, i, y, x, scale_y, scale_x, threshold)) owner = i;
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
