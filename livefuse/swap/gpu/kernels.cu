// livefuse's GPU frame path: face crop + model input, model output + relighting + paste-back,
// and BGR -> YUV 4:2:0 for the virtual camera or an encoder.
//
// One source, two compilers: NVRTC compiles it for the GPU (livefuse/swap/gpu/nvrtc.py), and g++
// compiles it with emulate.hpp (-DLF_EMULATE) into a CPU library that runs every thread of a
// launch in a loop, so the tests check these very kernels against the CPU path on machines
// without a GPU. Hence: plain C++ with no headers, no shared memory, no warp intrinsics, one
// thread per output pixel (or 2x2 block), and floating point written out the same on both.
//
// Conventions (the same as livefuse.geometry.align and OpenCV's warpAffine):
// - frames are interleaved BGR uint8 with a row pitch in bytes;
// - pixel centres are at integer coordinates; bilinear sampling; texels outside an image
//   read as 0 (BORDER_CONSTANT);
// - an affine maps x' = a x + b y + c, y' = d x + e y + f.

#ifdef LF_EMULATE
#include "emulate.hpp"
#else
#define LF_KERNEL extern "C" __global__ void
#define LF_INLINE __device__ __forceinline__
#endif

#define LF_KERNEL_NAMES(X)                                                                                   \
    X(lf_crop_input) X(lf_paste_output) X(lf_colour_moments) X(lf_light_cells) X(lf_light_map) X(lf_bgr_to_yuv420)

struct LfAffine {
    float a, b, c, d, e, f;
};

// Model input layout: value = pixel * scale[c] + offset[c] for model channel c.
struct LfInput {
    float scale[3];
    float offset[3];
    int rgb;   // model channel 0 is red
    int nchw;  // planar (N,3,S,S) rather than (N,S,S,3)
    int half;  // write IEEE fp16 instead of fp32
};

// Model output layout: pixel = clip((value - lo) * 255 / (hi - lo), 0, 255), truncated.
struct LfOutput {
    float lo, hi;
    int rgb, nchw, half;
};

// A 3x4 affine colour map on BGR (livefuse.swap.blend.colour_transfer), or none.
struct LfColour {
    float m[12];
    int on;
};

// Most taps of the relighting's Gaussian (2 * radius + 1).
#define LF_LIGHT_TAPS 17

// The relighting's constants (livefuse.swap.relight), filled in by the host.
struct LfLight {
    float taps[LF_LIGHT_TAPS];  // cv2.getGaussianKernel(2 * radius + 1, SIGMA, CV_32F)
    int radius;
    int cells;          // the light grid is cells x cells over the crop
    float gamma;        // GAMMA: how much of the source's contrast the result keeps
    float offset;       // 1 - GAMMA, rounded to float as numpy rounds it
    float floor;        // FLOOR: the source's light is taken as at least this
    float eps;          // EPS: added to the blurred skin weight
    float min_skin;     // MIN_SKIN: less skin than this over the grid and the face is left as it is
};

#ifndef LF_EMULATE
LF_INLINE unsigned short lf_f2h(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

LF_INLINE float lf_h2f(unsigned short h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}
#endif

LF_INLINE float lf_texel(const unsigned char* img, int pitch, int w, int h, int x, int y, int c) {
    return (x >= 0 && y >= 0 && x < w && y < h) ? (float)img[y * pitch + x * 3 + c] : 0.0f;
}

// Bilinear BGR sample at (sx, sy); fractions are kept (no rounding to uint8 in between).
LF_INLINE void lf_sample_bgr(const unsigned char* img, int pitch, int w, int h, float sx, float sy, float* bgr) {
    float fx = floorf(sx), fy = floorf(sy);
    int x0 = (int)fx, y0 = (int)fy;
    float ax = sx - fx, ay = sy - fy;
    for (int c = 0; c < 3; ++c) {
        float top = (1.0f - ax) * lf_texel(img, pitch, w, h, x0, y0, c) + ax * lf_texel(img, pitch, w, h, x0 + 1, y0, c);
        float bottom =
            (1.0f - ax) * lf_texel(img, pitch, w, h, x0, y0 + 1, c) + ax * lf_texel(img, pitch, w, h, x0 + 1, y0 + 1, c);
        bgr[c] = (1.0f - ay) * top + ay * bottom;
    }
}

// Grid: (ceil(S/bx), ceil(S/by), faces). Face n's crop pixel (x, y) samples the frame at
// to_frame[n] (x, y) and is written, normalised, straight into the model's input batch.
LF_KERNEL lf_crop_input(const unsigned char* frame, int pitch, int width, int height, const LfAffine* to_frame,
                        int size, LfInput fmt, void* out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int n = blockIdx.z;
    if (x >= size || y >= size) return;
    LfAffine m = to_frame[n];
    float bgr[3];
    lf_sample_bgr(frame, pitch, width, height, m.a * x + m.b * y + m.c, m.d * x + m.e * y + m.f, bgr);
    for (int c = 0; c < 3; ++c) {
        float v = bgr[fmt.rgb ? 2 - c : c] * fmt.scale[c] + fmt.offset[c];
        long i = fmt.nchw ? (((long)n * 3 + c) * size + y) * size + x : (((long)n * size + y) * size + x) * 3 + c;
        if (fmt.half) {
            ((unsigned short*)out)[i] = lf_f2h(v);
        } else {
            ((float*)out)[i] = v;
        }
    }
}

LF_INLINE float lf_output_value(const void* out, const LfOutput& fmt, long i) {
    return fmt.half ? lf_h2f(((const unsigned short*)out)[i]) : ((const float*)out)[i];
}

LF_INLINE float lf_saturate(float v) {
    return fminf(fmaxf(v, 0.0f), 255.0f);
}

// One model output pixel as the CPU path makes it (CropSpec.to_image, then cv2.transform
// with the colour map): BGR, whole numbers 0..255.
LF_INLINE void lf_face_pixel(const void* out, const LfOutput& fmt, const LfColour& colour, int size, int x, int y,
                             float* bgr) {
    float k = 255.0f / (fmt.hi - fmt.lo);
    for (int c = 0; c < 3; ++c) {
        int channel = fmt.rgb ? 2 - c : c;
        long i = fmt.nchw ? ((long)channel * size + y) * size + x : ((long)y * size + x) * 3 + channel;
        bgr[c] = floorf(lf_saturate((lf_output_value(out, fmt, i) - fmt.lo) * k));
    }
    if (!colour.on) return;
    float b = bgr[0], g = bgr[1], r = bgr[2];
    for (int c = 0; c < 3; ++c) {
        const float* row = colour.m + 4 * c;
        bgr[c] = rintf(lf_saturate(row[0] * b + row[1] * g + row[2] * r + row[3]));
    }
}

// Face pixel (u, v) relit as livefuse.swap.relight.relight does it: the light map (gain and
// offset per grid cell, from lf_light_map) scaled up to the crop bilinearly with cv2.resize's
// pixel-centre convention and clamped border, then face * gain + offset, rounded to uint8.
LF_INLINE void lf_relight_pixel(const float* map, int cells, int size, int u, int v, float* bgr) {
    float k = (float)cells / (float)size;
    float fx = (u + 0.5f) * k - 0.5f, fy = (v + 0.5f) * k - 0.5f;
    int sx = (int)floorf(fx), sy = (int)floorf(fy);
    fx -= (float)sx;
    fy -= (float)sy;
    // Columns: clamped to the edge cells with the weight moved onto them (as OpenCV does);
    // rows: clamped indices, weights kept.
    if (sx < 0) sx = 0, fx = 0.0f;
    if (sx >= cells - 1) sx = cells - 1, fx = 0.0f;
    int sx1 = sx + 1 < cells ? sx + 1 : cells - 1;
    int sy0 = sy < 0 ? 0 : (sy > cells - 1 ? cells - 1 : sy);
    int sy1 = sy + 1 < 0 ? 0 : (sy + 1 > cells - 1 ? cells - 1 : sy + 1);
    for (int c = 0; c < 3; ++c) {
        float at[2];
        for (int k2 = 0; k2 < 2; ++k2) {  // gain, then offset
            int ch = 3 * k2 + c;
            float top = map[(sy0 * cells + sx) * 6 + ch] * (1.0f - fx) + map[(sy0 * cells + sx1) * 6 + ch] * fx;
            float bottom = map[(sy1 * cells + sx) * 6 + ch] * (1.0f - fx) + map[(sy1 * cells + sx1) * 6 + ch] * fx;
            at[k2] = top * (1.0f - fy) + bottom * fy;
        }
        float relit = bgr[c] * at[0];
        relit += at[1];
        bgr[c] = rintf(lf_saturate(relit));
    }
}

// Grid covers the w x h frame box at (x0, y0). Each frame pixel maps into the crop with
// to_crop, and blends the premultiplied face (face * mask) over frame * (1 - mask), rounding
// where livefuse.geometry.align.paste_back rounds. Where the mask is 0 the pixel is unchanged.
// `out` is face n's model output, `mask` its S x S float blend mask; `light` its cells x cells
// light map from lf_light_map, or null for no relighting.
LF_KERNEL lf_paste_output(unsigned char* frame, int pitch, int x0, int y0, int w, int h, const void* out,
                          LfOutput fmt, int size, const float* mask, LfAffine to_crop, LfColour colour,
                          const float* light, int cells) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    float fx = (float)(x0 + x), fy = (float)(y0 + y);
    float u = to_crop.a * fx + to_crop.b * fy + to_crop.c;
    float v = to_crop.d * fx + to_crop.e * fy + to_crop.f;
    float fu = floorf(u), fv = floorf(v);
    int u0 = (int)fu, v0 = (int)fv;
    float au = u - fu, av = v - fv;
    float add[3] = {0.0f, 0.0f, 0.0f};
    float keep = 0.0f;
    for (int j = 0; j < 2; ++j) {
        for (int i = 0; i < 2; ++i) {
            float weight = (i ? au : 1.0f - au) * (j ? av : 1.0f - av);
            int cu = u0 + i, cv = v0 + j;
            if (cu < 0 || cv < 0 || cu >= size || cv >= size) {
                keep += weight * 255.0f;  // outside the crop: all frame, nothing added
                continue;
            }
            float alpha = mask[cv * size + cu];
            float bgr[3];
            lf_face_pixel(out, fmt, colour, size, cu, cv, bgr);
            if (light) lf_relight_pixel(light, cells, size, cu, cv, bgr);
            for (int c = 0; c < 3; ++c) add[c] += weight * rintf(bgr[c] * alpha);
            keep += weight * rintf((1.0f - alpha) * 255.0f);
        }
    }
    // Where the mask is 0, keep is 255 and add 0: px * 255 / 255 gives px back exactly.
    keep = rintf(keep);
    unsigned char* px = frame + (long)(y0 + y) * pitch + (long)(x0 + x) * 3;
    for (int c = 0; c < 3; ++c) {
        float kept = rintf(px[c] * keep / 255.0f);
        px[c] = (unsigned char)lf_saturate(kept + rintf(add[c]));
    }
}

// OpenCV's 8-bit BGR -> YCrCb, in its own fixed point (14 bits), so the sums below are the
// very numbers cv2.cvtColor + cv2.meanStdDev see on the CPU path.
LF_INLINE void lf_ycrcb(const float* bgr, int* ycc) {
    int b = (int)bgr[0], g = (int)bgr[1], r = (int)bgr[2];
    int y = (b * 1868 + g * 9617 + r * 4899 + 8192) >> 14;
    int cr = ((r - y) * 11682 + (128 << 14) + 8192) >> 14;
    int cb = ((b - y) * 9241 + (128 << 14) + 8192) >> 14;
    ycc[0] = y;
    ycc[1] = cr < 0 ? 0 : (cr > 255 ? 255 : cr);
    ycc[2] = cb < 0 ? 0 : (cb > 255 ? 255 : cb);
}

// Grid: (ceil(S/bx), 1, faces). Thread y adds up row y of face n's crop where box > 0.5 (the
// pixels livefuse.swap.blend.colour_transfer measures): the swapped face's Y, Cr, Cb, their
// squares, the target's likewise, and the count - 13 floats per row in rows[n][y]. Whole
// numbers, at most 128 * 255^2 per row: exact in fp32. The host adds the rows up.
LF_KERNEL lf_colour_moments(const unsigned char* frame, int pitch, int width, int height, const LfAffine* to_frame,
                            const void* out, LfOutput fmt, int size, const float* box, float* rows) {
    int y = blockIdx.x * blockDim.x + threadIdx.x;
    int n = blockIdx.z;
    if (y >= size) return;
    LfAffine m = to_frame[n];
    const void* face = (const char*)out + (long)n * 3 * size * size * (fmt.half ? 2 : 4);
    LfColour none;
    none.on = 0;
    float acc[13];
    for (int k = 0; k < 13; ++k) acc[k] = 0.0f;
    for (int x = 0; x < size; ++x) {
        if (box[y * size + x] <= 0.5f) continue;
        float swapped[3], target[3];
        lf_face_pixel(face, fmt, none, size, x, y, swapped);
        lf_sample_bgr(frame, pitch, width, height, m.a * x + m.b * y + m.c, m.d * x + m.e * y + m.f, target);
        for (int c = 0; c < 3; ++c) target[c] = rintf(target[c]);  // the CPU path's crop is uint8
        int s[3], t[3];
        lf_ycrcb(swapped, s);
        lf_ycrcb(target, t);
        for (int c = 0; c < 3; ++c) {
            acc[c] += (float)s[c];
            acc[3 + c] += (float)(s[c] * s[c]);
            acc[6 + c] += (float)t[c];
            acc[9 + c] += (float)(t[c] * t[c]);
        }
        acc[12] += 1.0f;
    }
    float* row = rows + ((long)n * size + y) * 13;
    for (int k = 0; k < 13; ++k) row[k] = acc[k];
}

// Relighting (livefuse.swap.relight.relight), in two small kernels before the paste:
// lf_light_cells measures the swapped face's and the target's colour and the skin weight on a
// coarse grid (cv2.resize INTER_AREA), lf_light_map blurs them (cv2.GaussianBlur) and turns
// them into a gain and an offset per cell; lf_paste_output scales those up and applies them.
// The grid is ~11 x 11 cells whatever the crop size, so this costs a few thousand threads per
// face, and it all happens in the frame's own compute: the light is this frame's, as on the
// CPU path, and nothing extra crosses the bus.

// One axis of cv2.resize's INTER_AREA table (computeResizeAreaTab) for output cell d of n
// source pixels scaled by `scale`: source pixels first..last, the inner ones weighted 1/width
// and the partly covered ends by their share. The weights are computed in double and rounded
// to float, as OpenCV does, so the cell averages are OpenCV's to the bit.
struct LfSpan {
    double start, end, width;
    int inner_first, inner_end, first, last;
};

LF_INLINE LfSpan lf_area_span(int d, double scale, int n) {
    LfSpan s;
    s.start = d * scale;
    s.end = s.start + scale;
    s.width = fmin(scale, n - s.start);
    int sx2 = (int)floor(s.end), sx1 = (int)ceil(s.start);
    sx2 = sx2 < n - 1 ? sx2 : n - 1;
    sx1 = sx1 < sx2 ? sx1 : sx2;
    s.inner_first = sx1;
    s.inner_end = sx2;
    s.first = sx1 - s.start > 1e-3 ? sx1 - 1 : sx1;
    s.last = s.end - sx2 > 1e-3 ? sx2 : sx2 - 1;
    return s;
}

LF_INLINE float lf_area_weight(const LfSpan& s, int i) {
    if (i < s.inner_first) return (float)((s.inner_first - s.start) / s.width);
    if (i < s.inner_end) return (float)(1.0 / s.width);
    return (float)(fmin(fmin(s.end - s.inner_end, 1.0), s.width) / s.width);
}

// Grid: (ceil(cells/bx), ceil(cells/by), 1), one face per launch (its colour map is an
// argument, as the paste's is). Thread (x, y) writes cell (x, y) of `cells_out`: the swapped
// face's B, G, R (colour-mapped, as the paste shows it) and the target crop's B, G, R, each the
// cell's area average rounded to uint8 (the CPU resizes uint8 crops), then the share of skin
// (box > 0.5) in the cell - 7 floats per cell. `to_frame` points at face n's crop -> frame
// affine and `out` at its model output.
LF_KERNEL lf_light_cells(const unsigned char* frame, int pitch, int width, int height, const LfAffine* to_frame,
                         const void* out, LfOutput fmt, int size, const float* box, LfColour colour, int cells,
                         float* cells_out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= cells || y >= cells) return;
    LfAffine m = *to_frame;
    double scale = 1.0 / ((double)cells / size);  // as cv::resize derives it
    LfSpan xs = lf_area_span(x, scale, size), ys = lf_area_span(y, scale, size);
    float acc[7];
    for (int k = 0; k < 7; ++k) acc[k] = 0.0f;
    for (int v = ys.first; v <= ys.last; ++v) {
        float beta = lf_area_weight(ys, v);
        float row[7];
        for (int k = 0; k < 7; ++k) row[k] = 0.0f;
        for (int u = xs.first; u <= xs.last; ++u) {
            float alpha = lf_area_weight(xs, u);
            float face[3], target[3];
            lf_face_pixel(out, fmt, colour, size, u, v, face);
            lf_sample_bgr(frame, pitch, width, height, m.a * u + m.b * v + m.c, m.d * u + m.e * v + m.f, target);
            for (int c = 0; c < 3; ++c) {
                row[c] += face[c] * alpha;
                row[3 + c] += rintf(target[c]) * alpha;  // the CPU path's crop is uint8
            }
            row[6] += (box[v * size + u] > 0.5f ? 1.0f : 0.0f) * alpha;
        }
        for (int k = 0; k < 7; ++k) acc[k] += beta * row[k];
    }
    float* cell = cells_out + ((long)y * cells + x) * 7;
    for (int k = 0; k < 6; ++k) cell[k] = rintf(lf_saturate(acc[k]));
    cell[6] = acc[6];
}

// OpenCV's BORDER_REFLECT_101 (borderInterpolate): ... 2 1 | 0 1 2 ... n-1 | n-2 ...
LF_INLINE int lf_reflect101(int i, int n) {
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
    return i;
}

// Grid: (ceil(cells/bx), ceil(cells/by), faces). Thread (x, y) of face n turns the cells of
// lf_light_cells into cell (x, y) of the light map: the skin-weighted colours blurred
// (normalised convolution: a separable Gaussian, rows first, reflected at the border), then
// per channel gain = gamma * target / max(face, floor) and offset = (1 - gamma) * target:
// 6 floats per cell. Too little skin on the grid: gain 1, offset 0 (the face as it is).
LF_KERNEL lf_light_map(const float* cells_in, LfLight light, float* map) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int n = blockIdx.z, cells = light.cells;
    if (x >= cells || y >= cells) return;
    const float* grid = cells_in + (long)n * cells * cells * 7;
    float* out = map + (((long)n * cells + y) * cells + x) * 6;
    float total = 0.0f;
    for (int i = 0; i < cells * cells; ++i) total += grid[i * 7 + 6];
    if (total < light.min_skin) {
        for (int c = 0; c < 3; ++c) out[c] = 1.0f, out[3 + c] = 0.0f;
        return;
    }
    float acc[7];
    for (int k = 0; k < 7; ++k) acc[k] = 0.0f;
    for (int j = -light.radius; j <= light.radius; ++j) {
        int yy = lf_reflect101(y + j, cells);
        float row[7];
        for (int k = 0; k < 7; ++k) row[k] = 0.0f;
        for (int i = -light.radius; i <= light.radius; ++i) {
            const float* cell = grid + ((long)yy * cells + lf_reflect101(x + i, cells)) * 7;
            float tap = light.taps[i + light.radius], skin = cell[6];
            for (int k = 0; k < 6; ++k) row[k] += tap * (cell[k] * skin);
            row[6] += tap * skin;
        }
        float tap = light.taps[j + light.radius];
        for (int k = 0; k < 7; ++k) acc[k] += tap * row[k];
    }
    float weight = acc[6] + light.eps;
    for (int c = 0; c < 3; ++c) {
        float face = acc[c] / weight, target = acc[3 + c] / weight;
        out[c] = light.gamma * target / fmaxf(face, light.floor);
        out[3 + c] = light.offset * target;
    }
}

LF_INLINE float lf_luma(float b, float g, float r) {
    return rintf(16.0f + 0.256788f * r + 0.504129f * g + 0.097906f * b);
}

// Grid covers (width/2, height/2): each thread converts one 2x2 block (BT.601, limited range,
// chroma from the block's mean). nv12: u_plane holds interleaved U,V and v_plane is unused;
// otherwise (I420) u_plane and v_plane are separate planes with uv_pitch.
LF_KERNEL lf_bgr_to_yuv420(const unsigned char* frame, int pitch, int width, int height, unsigned char* y_plane,
                           int y_pitch, unsigned char* u_plane, unsigned char* v_plane, int uv_pitch, int nv12) {
    int bx = blockIdx.x * blockDim.x + threadIdx.x;
    int by = blockIdx.y * blockDim.y + threadIdx.y;
    if (2 * bx >= width || 2 * by >= height) return;
    float sb = 0.0f, sg = 0.0f, sr = 0.0f;
    for (int j = 0; j < 2; ++j) {
        for (int i = 0; i < 2; ++i) {
            const unsigned char* px = frame + (long)(2 * by + j) * pitch + (long)(2 * bx + i) * 3;
            float b = px[0], g = px[1], r = px[2];
            y_plane[(long)(2 * by + j) * y_pitch + 2 * bx + i] = (unsigned char)lf_luma(b, g, r);
            sb += b;
            sg += g;
            sr += r;
        }
    }
    sb *= 0.25f;
    sg *= 0.25f;
    sr *= 0.25f;
    unsigned char cb = (unsigned char)lf_saturate(rintf(128.0f - 0.148223f * sr - 0.290993f * sg + 0.439216f * sb));
    unsigned char cr = (unsigned char)lf_saturate(rintf(128.0f + 0.439216f * sr - 0.367788f * sg - 0.071427f * sb));
    if (nv12) {
        u_plane[(long)by * uv_pitch + 2 * bx] = cb;
        u_plane[(long)by * uv_pitch + 2 * bx + 1] = cr;
    } else {
        u_plane[(long)by * uv_pitch + bx] = cb;
        v_plane[(long)by * uv_pitch + bx] = cr;
    }
}
