// sd-webui-instantid: small helpers for the browser side.
//
// The WebUI adds every javascript/*.js of an extension to the page after its own script.js, so
// gradioApp(), onUiLoaded() and friends exist by the time the callbacks below run.
//
// What this file assumes about the Python side:
//  * The reference-image slot has elem_id "instantid_<tab>_images", <tab> being "txt2img" or
//    "img2img". It is a gr.Image, gr.File or any component that holds an <input type="file">
//    while it is empty (and a "Clear" button while it holds something).
//  * The slot sits inside the InstantID accordion: a gradio accordion block (class
//    "gradio-accordion", or "input-accordion" for the WebUI's InputAccordion), ideally with an
//    elem_id that starts with "instantid_".
// Elements are looked up when an event happens, so a missing, hidden or re-rendered element
// only means that nothing happens.
//
// 1. Paste: Ctrl+V with an image on the clipboard, while the pointer is over the InstantID
//    accordion (or the keyboard focus is inside it), puts the image into the reference slot.
//    Otherwise the WebUI's own paste handling (javascript/dragdrop.js) is left alone.
// 2. Hint: the slot gets a tooltip that tells about 1, unless it already has one.

(function() {
    "use strict";

    var TABS = ["txt2img", "img2img"];
    var IMAGE_TYPE = /^image\/(png|jpeg|webp|gif|bmp)$/i;
    var ACCORDION_CLASSES = ["gradio-accordion", "input-accordion"];
    var CLEAR_BUTTONS = [
        'button[aria-label="Clear"]',
        'button[title="Clear"]',
        ".modify-upload button + button",
        ".touch-none + div button + button",
    ];
    var HINT = "Drop a face photo here, click to choose one, or hover over InstantID and press Ctrl+V to paste it.";

    var hovered = null; // the element under the pointer, if any

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function slotFor(tab, root) {
        root = root || app();
        var id = "instantid_" + tab + "_images";
        return root.getElementById ? root.getElementById(id) : root.querySelector("#" + id);
    }

    function isShown(el) {
        return !!el && typeof el.getClientRects === "function" && el.getClientRects().length > 0;
    }

    function isAccordion(el) {
        return !!el && !!el.classList && ACCORDION_CLASSES.some(function(c) {
            return el.classList.contains(c);
        });
    }

    // The InstantID area around a slot: the outermost accordion whose id starts with
    // "instantid_", else the nearest accordion, else the slot itself.
    function areaOf(slot) {
        var nearest = null;
        var ours = null;
        for (var el = slot.parentElement; el; el = el.parentElement) {
            if (!isAccordion(el)) continue;
            if (!nearest) nearest = el;
            if (el.id && el.id.indexOf("instantid_") === 0) ours = el;
        }
        return ours || nearest || slot;
    }

    function contains(area, node) {
        if (!node || (typeof document !== "undefined" && node === document.body)) return false;
        return typeof area.contains === "function" && area.contains(node);
    }

    // The slot the user means: visible, and its area under the pointer or holding the focus.
    function targetSlot(root, pointerTarget, focused) {
        for (var i = 0; i < TABS.length; i++) {
            var slot = slotFor(TABS[i], root);
            if (!isShown(slot)) continue;
            var area = areaOf(slot);
            if (contains(area, pointerTarget) || contains(area, focused)) return slot;
        }
        return null;
    }

    // Image files on the clipboard (or in a DataTransfer), in order.
    function imageFiles(data) {
        var files = [];
        if (!data) return files;
        var i;
        if (data.files && data.files.length) {
            for (i = 0; i < data.files.length; i++) files.push(data.files[i]);
        } else if (data.items) {
            for (i = 0; i < data.items.length; i++) {
                var item = data.items[i];
                if (item.kind === "file") {
                    var file = item.getAsFile();
                    if (file) files.push(file);
                }
            }
        }
        return files.filter(function(f) {
            return IMAGE_TYPE.test(f.type || "");
        });
    }

    function isTextEntry(el) {
        if (!el) return false;
        if (el.isContentEditable || el.tagName === "TEXTAREA") return true;
        return el.tagName === "INPUT" && /^(text|search|number|url|email|)$/i.test(el.type || "");
    }

    function clearSlot(slot) {
        for (var i = 0; i < CLEAR_BUTTONS.length; i++) {
            var button = slot.querySelector(CLEAR_BUTTONS[i]);
            if (button) {
                button.click();
                return true;
            }
        }
        return false;
    }

    function flash(slot) {
        slot.classList.add("instantid-pasted");
        setTimeout(function() {
            slot.classList.remove("instantid-pasted");
        }, 600);
    }

    // Hand the files to the slot's file input the way a file chooser would. A slot that already
    // holds an image has no input: clear it first and wait a few frames for the input to appear.
    function deliver(slot, files, framesLeft) {
        var input = slot.querySelector('input[type="file"]');
        if (input) {
            var transfer = new DataTransfer();
            (input.multiple ? files : files.slice(0, 1)).forEach(function(f) {
                transfer.items.add(f);
            });
            input.files = transfer.files;
            input.dispatchEvent(new Event("change", {bubbles: true}));
            flash(slot);
            return;
        }
        if (framesLeft === undefined) {
            if (!clearSlot(slot)) return;
            framesLeft = 30;
        }
        if (framesLeft > 0) {
            requestAnimationFrame(function() {
                deliver(slot, files, framesLeft - 1);
            });
        } else {
            console.warn("InstantID: could not find the upload field of the reference image to paste into.");
        }
    }

    function onPaste(event) {
        var data = event.clipboardData;
        var files = imageFiles(data);
        if (!files.length) return;
        var focused = document.activeElement;
        // Pasting into a text box keeps its text when the clipboard has some.
        if (isTextEntry(focused) && data.types && Array.prototype.indexOf.call(data.types, "text/plain") >= 0) return;
        var slot = targetSlot(app(), hovered, focused);
        if (!slot) return;
        // Ours: keep the WebUI's window-level handler from also pasting into another image field.
        event.preventDefault();
        event.stopImmediatePropagation();
        deliver(slot, files);
    }

    function addHints() {
        TABS.forEach(function(tab) {
            var slot = slotFor(tab);
            if (slot && !slot.title) slot.title = HINT;
        });
    }

    if (typeof window !== "undefined" && typeof document !== "undefined") {
        document.addEventListener("mouseover", function(event) {
            hovered = event.target;
        }, true);
        document.addEventListener("mouseout", function(event) {
            if (!event.relatedTarget) hovered = null; // the pointer left the page
        }, true);
        // Capture phase on window: runs before the WebUI's own bubble-phase paste listener.
        window.addEventListener("paste", onPaste, true);
        if (typeof onUiLoaded === "function") {
            onUiLoaded(addHints);
        } else {
            document.addEventListener("DOMContentLoaded", addHints);
        }
    }

    // For the tests (Node has `module`; browsers do not).
    if (typeof module !== "undefined" && module.exports) {
        module.exports = {areaOf: areaOf, imageFiles: imageFiles, isTextEntry: isTextEntry, targetSlot: targetSlot};
    }
})();
