//! Graph capture's contract: a replay runs what was recorded, reading its buffers as they are at
//! that moment; what is not a launch cannot be recorded; the cpu device has nothing to capture.

use kernels::{Device, Pool2dShape};

use crate::common::{assert_exact, devices, download, nan_buffer, pool, upload};

#[test]
fn a_replayed_graph_runs_what_was_recorded_and_only_launches_can_be_recorded() {
    let s: Pool2dShape = pool(1, 2, 4, 4);
    let x: Vec<f32> = (0..s.input_len()).map(|i| i as f32 - 10.0).collect();
    for dev in devices() {
        let what = dev.name();
        if *dev == Device::Cpu {
            let error = dev.capture(|| Ok::<(), kernels::Error>(())).unwrap_err();
            assert!(
                error.to_string().contains("no kernels to capture"),
                "{error}"
            );
            continue;
        }
        let mut x_buf = upload(dev, &x);
        let mut y = nan_buffer(dev, s.output_len());
        let mut argmax = dev.zeros(s.output_len()).unwrap();
        let graph = dev
            .capture(|| dev.maxpool2d_relu_forward(&s, &x_buf, &mut y, &mut argmax))
            .unwrap();
        // Nothing ran yet; then each replay reads x as it is at that moment.
        assert!(download(dev, &y).iter().all(|v| v.is_nan()), "{what}");
        for shift in [0.0, 20.0] {
            let shifted: Vec<f32> = x.iter().map(|v| v + shift).collect();
            dev.write(&shifted, &mut x_buf).unwrap();
            // SAFETY: the graph's buffers (x, y, argmax) are all alive and unchanged in size.
            unsafe { dev.launch_graph(&graph).unwrap() };
            let mut want = (vec![0.0; s.output_len()], vec![0; s.output_len()]);
            kernels::reference::maxpool2d_forward(&s, &shifted, &mut want.0, &mut want.1);
            let want_y: Vec<f32> = want.0.iter().map(|&v: &f32| v.max(0.0)).collect();
            assert_exact(
                &format!("{what} shift {shift}"),
                &download(dev, &y),
                &want_y,
            );
        }
        let error = dev.capture(|| dev.write(&x, &mut x_buf)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot be part of a graph capture"),
            "{what}: {error}"
        );
        // The failed capture ended: the device works as before.
        dev.write(&x, &mut x_buf).unwrap();
    }
}
